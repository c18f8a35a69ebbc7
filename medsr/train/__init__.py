"""Training: pairs drawn from volumes (`pairs`), losses, the `Trainer`, the `medsr train` run
(`run`) and the SMORE ablation fit (`smore`)."""
