"""``python -m models [--num_classes N]``: every registered model with its parameter count,
then the other sources of models and how to name a model from each (models/sources.py)."""
import argparse

from models import create_model, model_names
from models.sources import SOURCES


def main(argv=None):
    parser = argparse.ArgumentParser(description="List the models with their parameter counts.")
    parser.add_argument("--num_classes", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"{'model':<22} {'parameters':>12}")
    for name in model_names():
        model = create_model(name, num_classes=args.num_classes)
        print(f"{name:<22} {sum(p.numel() for p in model.parameters()) / 1e6:>11.2f}M")
    print("\nOther sources: a name with a prefix, wherever a model name is accepted "
          "(--model, --model_s, --model_t):")
    for line in SOURCES.values():
        print(f"  {line}")
    print("Features: timm's feature_info stages; torchvision's graph nodes (the last of each\n"
          "resolution); your module's only if it implements models/base.py FeatureModel, else\n"
          "logit methods only. preact=True (ab, mgd, reviewkd) needs a registered model.")


if __name__ == "__main__":
    main()
