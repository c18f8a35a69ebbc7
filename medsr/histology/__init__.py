"""Serial histology: rigid alignment of consecutive sections (`alignment`)."""
