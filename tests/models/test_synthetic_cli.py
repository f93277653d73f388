"""CLI of the benchmark: ``sparsefuse data preview``, and the user errors of train / eval."""

from __future__ import annotations

from sparsefuse.compiler.cli import main


def test_data_preview_writes_pngs(tmp_path, capsys):
    assert main(["data", "preview", "--seed", "3", "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"cameras.png", "bev.png", "labels.png", "cam_CAM_FRONT.png", "cam_CAM_BACK_LEFT.png"} <= names
    assert len(names) == 9
    for path in tmp_path.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bev.png" in capsys.readouterr().out


def test_user_mistakes_exit_2(tmp_path, capsys):
    assert main(["data", "preview", "--seed", "-1", "--out", str(tmp_path)]) == 2
    assert main(["data", "preview", "--size", "12", "--out", str(tmp_path)]) == 2
    assert main(["data", "generate", "--seeds", "5:2"]) == 2
    assert main(["eval", "--modes", "radar_only"]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert main(["train", "--out", str(tmp_path / "x.safetensors"), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: bad --seed -1" in err and "unknown mode" in err and "checkpoint not found" in err
    assert "Traceback" not in err


def test_data_preview_with_the_shipped_checkpoint(tmp_path):
    from pathlib import Path

    import sparsefuse.models as models_pkg

    ckpt = Path(models_pkg.__file__).parent / "checkpoints" / "bevfusion-tiny.safetensors"
    args = ["data", "preview", "--seed", "4", "--out", str(tmp_path), "--checkpoint", str(ckpt)]
    assert main(args) == 0
    assert (tmp_path / "bev.png").stat().st_size > 10_000
