"""Write small webdataset shards of synthetic image-text "web pages" (jpg + json/txt).

    python run_scripts/aim/make_web_shards.py --out output/cache/aim_web_shards --shards 8 --pages 32

See lavis_mmict.datasets.web_pairs.generate_web_shards for what they hold.
"""
import argparse

from lavis_mmict.datasets.web_pairs import generate_web_shards


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/cache/aim_web_shards", help="output folder")
    parser.add_argument("--shards", type=int, default=8, help="number of shards")
    parser.add_argument("--pages", type=int, default=32, help="pages (4 pairs each) per shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image height = width")
    parser.add_argument("--text-format", default="json", choices=["json", "txt", "both"])
    args = parser.parse_args()
    paths = generate_web_shards(args.out, num_shards=args.shards, pages_per_shard=args.pages,
                                seed=args.seed, size=args.size, text_format=args.text_format, progress=True)
    print(f"wrote {len(paths)} shards: {paths[0]} ... {paths[-1]}")


if __name__ == "__main__":
    main()
