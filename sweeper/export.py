"""`sweeper export`: a run's chosen head as files another program loads without this package's run folder.

    OUT/segmentation_head.pth   the head's state_dict (tensors on the CPU): for phase 1's head, the file the
                                organisers' test script loads (same module names, strict)
    OUT/config.json             what the head is and how it was chosen: head name, backbone, input size, label
                                mode, class names, trial and epoch, its val IoU, and the one line of Python
                                that builds the module for these weights

The head is picked as `sweeper evaluate` picks it (`run_heads.load_run_head`: a sweep's best trial at its best
epoch by default) and loaded into its class with strict=True before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeper.data.classes import CLASS_NAMES, NUM_CLASSES
from sweeper.errors import SweeperError
from sweeper.files import write_json
from sweeper.model.backbone import BACKBONES
from sweeper.rundir.heads import build_head, load_run_head, save_head
from sweeper.rundir.layout import CONFIG_FILE, HEAD_FILE


def build_line(head: str, in_channels: int, num_classes: int = NUM_CLASSES) -> str:
    """The one line of Python that builds the module these weights load into."""
    return (f"from sweeper.model.head import create_head; head = create_head({head!r}, in_channels={in_channels}, "
            f"num_classes={num_classes}); head.load_state_dict(torch.load({HEAD_FILE!r}, map_location='cpu', weights_only=True))")


def in_channels_of(inputs: dict[str, Any], source: Path) -> int:
    """The token width of the backbone the run trained on (its registry entry)."""
    name = (inputs.get("backbone") or {}).get("name")
    if name not in BACKBONES:
        raise SweeperError(f"{source}: backbone {name!r} is not one this version knows "
                           f"({', '.join(sorted(BACKBONES))})")
    return BACKBONES[name].embed_dim


def export_head(run_dir: Path, *, out: Path, trial: str | int = "best", epoch: str = "best") -> Path:
    """Write OUT/segmentation_head.pth and OUT/config.json for the chosen head; refuses to replace either."""
    out = Path(out)
    taken = [out / n for n in (HEAD_FILE, CONFIG_FILE) if (out / n).exists()]
    if taken:
        raise SweeperError(f"{taken[0]}: already exists; export into an empty or new folder (--out)")
    run = load_run_head(Path(run_dir), trial=trial, epoch=epoch)
    channels = in_channels_of(run.inputs, run.weights_file)
    head = build_head(run, in_channels=channels)  # strict load: the weights fit the head they claim to be
    out.mkdir(parents=True, exist_ok=True)
    save_head(out / HEAD_FILE, {k: v.detach().cpu() for k, v in head.state_dict().items()})
    validation = run.validation or {}
    write_json(out / CONFIG_FILE, {
        "head": run.config.head, "in_channels": channels, "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES[:NUM_CLASSES]),
        "parameters": sum(p.numel() for p in head.parameters()),
        "build": build_line(run.config.head, channels),
        "organisers_test_script": run.config.head == "convnext_phase1",
        "backbone": run.inputs.get("backbone"), "image_size": [run.config.image_height, run.config.image_width],
        "label_mode": run.config.label_mode.value, "config": run.config.to_dict(),
        "source": {"run_dir": str(Path(run_dir).resolve()), "kind": run.kind, "trial": run.trial,
                   "weights_file": str(run.weights_file), "selection": run.selection},
        "val_iou": validation.get("val_iou"), "val_epoch": validation.get("epoch"),
        "synthetic_data": bool((run.inputs.get("data") or {}).get("synthetic")),
    })
    return out
