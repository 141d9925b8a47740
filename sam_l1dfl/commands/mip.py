"""``sam-l1dfl mip --pet SUV.nii.gz [--mask SEG.nii.gz ...] --out fig.png``: PET MIP pictures."""

from __future__ import annotations

from sam_l1dfl.commands import add_output_flags

HELP = "render PET maximum-intensity projections with masks"
#: Shown by ``--help``; each one runs (or parses) in tests/test_help_examples.py.
EXAMPLES = (
    "sam-l1dfl mip --pet SUV.nii.gz --mask SEG.nii.gz --out fig.png",
)


def add_arguments(parser) -> None:
    parser.add_argument("--pet", required=True, metavar="SUV.nii.gz", help="PET volume (SUV)")
    parser.add_argument("--mask", action="append", default=[], metavar="[NAME=]MASK.nii.gz",
                        help="mask to outline (repeatable); any grid, it is drawn in world mm; "
                             "the legend uses NAME or the file name")
    parser.add_argument("--axis", choices=("coronal", "sagittal", "both"), default="both",
                        help="projection(s) to draw (default both)")
    parser.add_argument("--vmax", type=float, default=10.0, help="SUV at full black (default 10)")
    parser.add_argument("--title", default=None, help="picture title (default: the PET file name)")
    parser.add_argument("--out", required=True, metavar="FIG.png", help="PNG to write (atomically)")
    add_output_flags(parser, verbose="also print the masks drawn")


def run(args) -> int:
    from pathlib import Path

    from sam_l1dfl.data.geometry import images_overlap
    from sam_l1dfl.data.io import read_image, strip_suffix
    from sam_l1dfl.errors import InputError
    from sam_l1dfl.io_utils import check_outputs
    from sam_l1dfl.viz import DEFAULT_COLORS, Panel, save_mip_figure

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(out, "output must be a .png file")
    if not args.vmax > 0:
        raise InputError(None, f"--vmax must be positive, not {args.vmax}")
    check_outputs([out], inputs=[args.pet, *args.mask, *(m.rpartition("=")[2] for m in args.mask)],
                  hint="choose another --out")
    pet = read_image(args.pet, "PET")
    masks = {}
    for n, spec in enumerate(args.mask):
        name, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        img = read_image(path, "mask")
        if not images_overlap(img, pet):
            raise InputError(path, f"mask does not overlap the PET {args.pet} in world coordinates")
        masks[name or strip_suffix(Path(path).name)] = (img, DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
    axes = ("coronal", "sagittal") if args.axis == "both" else (args.axis,)
    title = args.title if args.title is not None else Path(args.pet).name
    panels = [Panel(pet=pet, masks=masks, axis=a, title=f"{title} ({a})") for a in axes]
    save_mip_figure(out, panels, vmax=args.vmax)
    for name in masks if args.verbose else []:
        print(f"mask: {name}")
    print(f"wrote {out}")
    return 0
