"""`medsr upsample`: its parser and the command."""

from __future__ import annotations

import argparse

from medsr.cli.options import (
    add_dicom_options,
    add_fit_options,
    add_input_geometry,
    add_runtime_options,
    add_target_options,
    check_dicom_options,
    check_learned_options,
    fit_settings,
    input_geometry,
)


def upsample_parser(commands) -> None:
    up = commands.add_parser("upsample", help="upsample a thick-slice volume along its thick axis")
    up.add_argument("input", help="volume file (NIfTI, NRRD, MHA, DICOM, TIFF) or folder")
    up.add_argument("-o", "--output", help="output file (default: beside the input)")
    up.add_argument(
        "--method",
        choices=["misr", "linear", "bspline", "labels"],
        default="misr",
        help="misr: the learned SR-GAN (default); linear / bspline: interpolation; labels: the "
        "input is a label map (shape-based interpolation)",
    )
    up.add_argument(
        "--labels",
        metavar="SEG",
        help="a label map on the input's grid (drawn on the thick slices), written on the "
        "output grid too",
    )
    up.add_argument(
        "--labels-out", metavar="PATH", help="where --labels goes (default: <output>_labels)"
    )
    up.add_argument(
        "--confidence",
        metavar="PATH",
        help="also write the learned method's confidence map here (the output's grid, the "
        "input's intensity units, larger = less certain; 0 on measured slices)",
    )
    add_fit_options(up)
    up.add_argument(
        "--fit-frame",
        type=int,
        metavar="N",
        help="4D series: fit once on frame N (from 0) instead of the mean of the frames",
    )
    up.add_argument(
        "--fit-per-frame",
        action="store_true",
        help="4D series: fit each frame on its own (slower; default: one fit serves every frame)",
    )
    add_target_options(up)
    up.add_argument(
        "--axis",
        type=int,
        choices=[0, 1, 2],
        help="array axis to upsample (default: the thickest, from the header)",
    )
    up.add_argument(
        "--dtype",
        choices=["input", "float32"],
        default="input",
        help="output voxel type (default: the input's, rounded and clipped)",
    )
    add_input_geometry(up)
    up.add_argument(
        "--align", action="store_true", help="rigidly align consecutive sections first (histology)"
    )
    up.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_dicom_options(
        up,
        format_help="dicom: write a DICOM series into the folder -o names (default: from -o's "
        "suffix)",
        patient_help="patient ID (and name) of the DICOM series of a non-DICOM input (default "
        "MEDSR-ANON)",
        modality_help="modality of the DICOM series of a non-DICOM input (default MR; a DICOM "
        "input's own)",
    )
    add_runtime_options(up)


def upsample_command(args: argparse.Namespace) -> int:
    from medsr.errors import MedsrError
    from medsr.upsample.checks import labels_output_path
    from medsr.upsample.files import upsample_file

    options = {}
    if args.method == "misr":
        options = {
            **fit_settings(args),
            "device": args.device,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "progress": not args.quiet,
        }
    check_learned_options(args)
    if args.confidence and args.method != "misr":
        raise MedsrError(
            f"--confidence maps the learned method's uncertainty; not --method {args.method}"
        )
    if args.confidence and args.orientations == 1:
        raise MedsrError("--confidence needs both orientations: leave out --orientations 1")
    if args.labels_out and not args.labels:
        raise MedsrError("--labels-out needs --labels")
    if args.method == "labels" and args.labels:
        raise MedsrError("--method labels upsamples the input itself; --labels is for an image")
    check_dicom_options(args)
    input_spacing, input_unit = input_geometry(args)
    output = upsample_file(
        args.input,
        args.output,
        method=args.method,
        spacing=args.spacing,
        scale=args.scale,
        axis=args.axis,
        input_spacing=input_spacing,
        input_unit=input_unit,
        keep_dtype=args.dtype == "input",
        overwrite=args.overwrite,
        align=args.align,
        allow_coarser=args.allow_coarser,
        series=args.series,
        slice_thickness=args.slice_thickness,
        slice_profile=args.slice_profile,
        labels=args.labels,
        labels_output=args.labels_out,
        output_format=args.output_format,
        dicom_patient_id=args.dicom_patient_id,
        dicom_modality=args.dicom_modality,
        fit_frame=args.fit_frame,
        fit_per_frame=args.fit_per_frame,
        confidence=args.confidence,
        **options,
    )
    if not args.quiet:
        print(f"wrote {output}")
        if args.labels:
            print(f"wrote {labels_output_path(output, args.labels_out)}")
        if args.confidence:
            print(f"wrote {args.confidence}")
    return 0
