"""The ``annoboot`` command line: a thin layer over :mod:`annoboot.commands`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import List, Optional

from annoboot import __version__
from annoboot.errors import AnnobootError

EPILOG = """examples:
  annoboot pretrain --config configs/quickstart.yaml
  annoboot pretrain --config configs/fmnist_ab_simclr.yaml train.steps=2000 method.gamma=0.5
  annoboot pretrain --config configs/fmnist_ab_simclr.yaml --resume
  annoboot pretrain --config configs/quickstart.yaml --overwrite   # replace the run in train.out_dir
  annoboot eval runs/quickstart --out runs/quickstart/eval.json
  annoboot export runs/quickstart --out exported/quickstart           # timm.create_model("local-dir:exported/quickstart")
  annoboot export runs/quickstart --out backbone.safetensors
  annoboot embed runs/quickstart /data/photos --out photos.npz
  annoboot similar photos.npz /data/photos/cat.jpg --k 8 --out cat_neighbours.png
  annoboot similar photos.npz --text "a red bag" --out red_bag.png       # CLIP / ABCLIP runs
  annoboot zero-shot runs/scenes_clip /data/photos --labels "a bag,a shoe,a shirt" --out labels.json
  annoboot compare runs/lr3e-4 runs/lr1e-3 runs/gamma0.5 --format md
  annoboot data write-shards /data/photos shards/train-%06d.tar
  annoboot data write-shards /usr/share/openclipart shards/clipart-%06d.tar --captions openclipart
  annoboot data inspect /data/photos
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annoboot",
        description="Visual pre-training on unlabeled images by annotation bootstrapping.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"annoboot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("pretrain", help="pre-train an encoder (then probe it if eval.at_end)")
    p.add_argument("--config", help="recipe YAML (see configs/); defaults apply without one")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in train.out_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="train.out_dir holds another run: move it aside to <out_dir>.replaced-<time> and start afresh")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")

    p = sub.add_parser("eval", help="probe a run's or an export's frozen encoder (kNN, linear, MAP); writes JSON")
    p.add_argument("run", help="run directory (its latest checkpoint), a checkpoint file, or an encoder from "
                               "annoboot export (its folder or .safetensors file)")
    p.add_argument("--out", help="JSON file for the results (default: <run>/eval.json for a run directory; "
                                 "none for an export)")
    p.add_argument("--weights", choices=["online", "ema"], default="online", help="which network's encoder")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.test.limit=1000 train.device=cpu")

    p = sub.add_parser("data", help="data helpers: write shards from a folder, inspect a source")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data_sub.add_parser("write-shards", help="pack a folder's images (+ .txt captions) into webdataset tar shards")
    d.add_argument("folder")
    d.add_argument("pattern", help="output pattern with a shard-number field, e.g. shards/train-%%06d.tar")
    d.add_argument("--max-count", type=int, default=10_000, help="samples per shard")
    d.add_argument(
        "--captions",
        choices=["txt", "openclipart", "tuxpaint"],
        default="txt",
        help="where captions come from: <image>.txt twins (default), or the set's own metadata "
        "(openclipart: FOLDER is /usr/share/openclipart; tuxpaint: /usr/share/tuxpaint/stamps)",
    )
    d = data_sub.add_parser("inspect", help="count images, their sizes and the undecodable ones (with reasons)")
    d.add_argument("source", help="an image folder or a shard pattern such as shards/train-{000000..000009}.tar")
    d.add_argument("--limit", type=int, help="look at the first N files only")

    p = sub.add_parser("embed", help="embed a folder's images with a trained encoder into an .npz (resumable)")
    p.add_argument("encoder", help="run directory, checkpoint file or exported .safetensors")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output .npz: names, L2-normalised embeddings, meta")
    p.add_argument("--weights", choices=["online", "ema"], default="online")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's train.device)")

    p = sub.add_parser("similar", help="nearest neighbours of an image (or a sentence) in an embeddings file: PNG sheet and JSON")
    p.add_argument("embeddings", help=".npz written by `annoboot embed`")
    p.add_argument("image", nargs="?", help="a file of the embedded folder, or any image (embedded now)")
    p.add_argument("--text", help="rank by a sentence instead of an image (files embedded by a CLIP or ABCLIP run)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--out", required=True, help="contact sheet .png; the neighbours go to the same name with .json")

    p = sub.add_parser("zero-shot", help="label a folder's images from a list of labels (CLIP and ABCLIP runs)")
    p.add_argument("encoder", help="run directory, checkpoint file or exported folder of a caption model")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--labels", help="comma-separated labels, e.g. 'a bag,a shoe,a shirt'")
    p.add_argument("--labels-file", help="a text file of labels, one per line (# comments allowed)")
    p.add_argument("--top", type=int, default=3, help="labels kept per image (default 3)")
    p.add_argument("--out", help="JSON file of each image's top labels and scores (default: printed only)")
    p.add_argument("--weights", choices=["online", "ema"], default="online")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's train.device)")

    p = sub.add_parser("viz", help="draw a run's training curves, IoU agreement and (ab_* runs) a value map as PNGs")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="folder for curves.png, agreement.png, value_map.png/.npy/.json")
    p.add_argument("--image-index", type=int, default=0, help="value map: image of the run's eval.test source")
    p.add_argument("--annotation", type=int, help="value map: annotation index (default: the image's own class or caption, else the likeliest)")
    p.add_argument("--grid", type=int, default=8, help="value map: G x G target boxes")
    p.add_argument("--box-scale", type=float, help="value map: box side / image side (default 1/G, at least the smallest bootstrap crop)")
    p.add_argument("--weights", choices=["online", "ema"], default="online")
    p.add_argument("--curves-only", action="store_true", help="skip the value map (runs without a value function)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.device=cpu eval.test.root=...")

    p = sub.add_parser("export", help="write a run's backbone for timm: a hub folder with its transform and card, or one file")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="a folder (model.safetensors, config.json, README.md: timm's local-dir: "
                   "and the model hub's layout) or a .safetensors file (with a .json beside it)")
    p.add_argument("--weights", choices=["online", "ema"], default="online")

    p = sub.add_parser("compare", help="runs side by side: steps, views, wall time, every probe, the options that differ")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their config.yaml, metrics.jsonl, eval.json)")
    p.add_argument("--format", choices=["text", "md", "csv", "json"], default="text", help="table layout (default: aligned text)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`eval RUN --out F key=value`), which argparse leaves unparsed.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The command as typed, recorded beside the figures it measures (eval.json).
    command = "annoboot " + " ".join(shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv))
    try:
        # Imported here so that `annoboot --help` stays fast.
        from pathlib import Path

        from annoboot import commands as runs
        from annoboot.recipe import load_config

        if args.command == "pretrain":
            if args.resume and args.overwrite:
                raise AnnobootError("--resume continues the run in train.out_dir and --overwrite moves it aside: pass one")
            runs.pretrain(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite,
                          command=command)
        elif args.command == "eval":
            from annoboot.export import SUFFIX, is_exported_folder

            if is_exported_folder(args.run) or args.run.endswith(SUFFIX):
                if args.weights != "online":
                    raise AnnobootError(f"--weights {args.weights}: {args.run} is an exported encoder, "
                                        "one set of weights")
                # No default --out: the export folder is what gets shared, and stays as exported.
                runs.evaluate_export(args.run, args.out, args.overrides, command=command)
            else:
                out = args.out
                if out is None and Path(args.run).is_dir():
                    out = str(Path(args.run) / "eval.json")
                runs.evaluate_run(args.run, out, args.weights, args.overrides, command=command)
        elif args.command == "data":
            from annoboot.data import tools

            if args.data_command == "write-shards":
                print(tools.format_report(tools.folder_to_shards(args.folder, args.pattern, args.max_count, args.captions)))
            else:
                print(tools.format_report(tools.inspect_source(args.source, args.limit)))
        elif args.command == "embed":
            from annoboot import embedding, pretrained

            encoder = pretrained.load_encoder(args.encoder, args.weights, args.device)
            print(embedding.embed_folder(encoder, args.folder, args.out, args.batch_size, args.chunk_size))
        elif args.command == "similar":
            import json

            from annoboot import similar

            if args.k <= 0:
                raise AnnobootError(f"--k must be a positive number of neighbours, got {args.k}")
            if (args.image is None) == (args.text is None):
                raise AnnobootError("similar: give an image or --text \"a sentence\" (one of them)")
            if args.text is not None:
                from annoboot.text_search import find_by_text

                matches, meta = find_by_text(args.embeddings, args.text, args.k)
                query, neighbours = f"text: {args.text}", [similar.Neighbour(m.name, m.score) for m in matches]
            else:
                query, neighbours, meta = similar.find_similar(args.embeddings, args.image, args.k)
            sheet = similar.contact_sheet(query, neighbours, meta["folder"], args.out)
            listing = Path(args.out).with_suffix(".json")
            listing.write_text(json.dumps({"query": query, "folder": meta["folder"],
                                           "neighbours": [{"name": n.name, "score": n.score} for n in neighbours]}, indent=2))
            for n in neighbours:
                print(f"{n.score:.4f}  {n.name}")
            print(f"wrote {sheet} and {listing}")
        elif args.command == "zero-shot":
            import json

            from annoboot import pretrained
            from annoboot.text_search import parse_labels, zero_shot_folder

            labels = parse_labels(args.labels, args.labels_file)
            encoder = pretrained.load_encoder(args.encoder, args.weights, args.device)
            result = zero_shot_folder(encoder, args.folder, labels, args.top)
            for item in result["images"]:
                print(f"{item['image']}  " + ", ".join(f"{l['label']} {l['score']:.3f}" for l in item["labels"]))
            skipped = sum(result["skipped"].values())
            if skipped:
                print(f"{skipped} file(s) skipped: {result['skipped']}")
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=2))
                print(f"wrote {args.out}")
        elif args.command == "export":
            runs.export_run(args.run, args.out, args.weights)
        elif args.command == "compare":
            from annoboot.compare import compare_runs, format_comparison

            print(format_comparison(compare_runs(args.runs), args.format))
        elif args.command == "viz":
            from annoboot.commands import visualize_run

            for path in visualize_run(args.run, args.out, args.image_index, args.annotation, args.grid, args.box_scale,
                                      args.weights, args.overrides, args.curves_only):
                print(f"wrote {path}")
    except AnnobootError as exc:
        print(f"annoboot: error: {exc.plain_message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # RunInterrupted: 130 / 143, as the signal would
    except KeyboardInterrupt:
        print("annoboot: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
