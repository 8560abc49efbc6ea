"""``python -m models [--num_classes N]``: every registered model with its parameter count."""
import argparse

from models import create_model, model_names


def main(argv=None):
    parser = argparse.ArgumentParser(description="List the models with their parameter counts.")
    parser.add_argument("--num_classes", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"{'model':<18} {'parameters':>12}")
    for name in model_names():
        model = create_model(name, num_classes=args.num_classes)
        print(f"{name:<18} {sum(p.numel() for p in model.parameters()) / 1e6:>11.2f}M")


if __name__ == "__main__":
    main()
