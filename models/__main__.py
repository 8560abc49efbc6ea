"""``python -m models [--num_classes N]``: every registered model with its parameter count,
then the other sources of models and how to name a model from each (models/sources.py)."""
import argparse

from models import create_model, model_names
from models.sources import SOURCES


def main(argv=None):
    parser = argparse.ArgumentParser(description="List the models with their parameter counts.")
    parser.add_argument("--num_classes", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"{'model':<22} {'parameters':>12}  input")
    imagenet = []
    for name in model_names():
        model = create_model(name, num_classes=args.num_classes)
        size = tuple(getattr(model, "input_size", ()))
        if size[1:] == (224, 224):
            imagenet.append(name)
        print(f"{name:<22} {sum(p.numel() for p in model.parameters()) / 1e6:>11.2f}M  "
              f"{'x'.join(map(str, size)) or '?'}{' *' if name in imagenet else ''}")
    print(f"\n* ImageNet models ({len(imagenet)}): their stem downsamples 4x at once, so a 32x32 "
          "image\n  is 8x8 after it and 1x1 in the last stage; on CIFAR use a CIFAR model above.")
    print("\nOther sources: a name with a prefix, wherever a model name is accepted "
          "(--model, --model_s, --model_t):")
    for line in SOURCES.values():
        print(f"  {line}")
    print("  timm:NAME:key=value,...  timm.create_model's (or torchvision's get_model's) "
          "keyword\n  arguments, e.g. timm:vit_tiny_patch16_224:patch_size=4,img_size=32 "
          "(a ViT on 32x32\n  inputs with 64 tokens)")
    print("Features: timm's feature_info stages; torchvision's graph nodes (the last of each\n"
          "resolution); your module's only if it implements models/base.py FeatureModel, else\n"
          "logit methods only. preact=True (ab, mgd, reviewkd) needs a registered model.")


if __name__ == "__main__":
    main()
