"""The one-command GPU benchmark (bench/gpu.py): its CPU dry run makes every part's table, the budget
skips parts with a note, its full-size models are the published architectures, and the device command
installs exactly what bench/gpu-wheels.sh collects."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402
from bench.common import full_size_model  # noqa: E402
from bench.gpu.harness import same_bits  # noqa: E402


class Done:
    """What a run of the benchmark's ``main`` left: its exit code, what it printed, its report."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def bench(tmp_path, monkeypatch, capsys):
    """``python -m vision bench gpu ARGS``, in-process (the child process only added imports): the
    environment variables and torch thread count it sets are restored afterwards."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("VISION_TINY", "1")  # main() sets it with --smoke; monkeypatch restores the original
    monkeypatch.setenv("VISION_OFFLINE", "1")

    def run(*args: str) -> tuple[Done, str]:
        out = tmp_path / "gpu.md"
        capsys.readouterr()
        code = gpu.main([*args, "--out", str(out)])
        printed = capsys.readouterr()
        return Done(code, printed.out, printed.err), out.read_text(encoding="utf-8") if out.exists() else ""

    yield run
    torch.set_num_threads(threads)


def _sections(report: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", report, re.S | re.M)}


def test_smoke_run_makes_every_table_and_the_machine_header(bench):
    done, report = bench( "--device", "cpu", "--smoke", "--budget-s", "3000")  # a loaded CPU skips none
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report.startswith("# GPU benchmark")
    for line in ("- GPU: none (CPU run)", f"- torch {torch.__version__}", "- machine: ", "SMOKE RUN",
                 'carry=[".whl"]'):
        assert line in report
    sections = _sections(report)
    for _, title, _ in gpu.PARTS:
        body = sections[title]
        assert "\n| " in body, f"{title}: no table"
        assert "Failed" not in body and "Skipped" not in body and "not run" not in body, body
    deepcache = sections[gpu.PARTS[0][1]]
    assert deepcache.count("N = 1 vs no cache: bit-identical") == 2  # DDIM and PLMS
    assert "helper speed-up" in deepcache and "### PLMS" in deepcache
    summary = sections["Summary"]
    assert summary.count("| done |") == len(gpu.PARTS)
    assert done.stdout.count("## ") >= len(gpu.PARTS)  # each part printed as it finished, too


def test_a_spent_budget_skips_every_part_with_a_note(bench):
    done, report = bench( "--device", "cpu", "--smoke", "--budget-s", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    sections = _sections(report)
    for _, title, _ in gpu.PARTS:
        assert sections[title].strip().startswith("**Skipped**: estimated"), sections[title]
    assert sections["Summary"].count("| skipped |") == len(gpu.PARTS)


def test_bad_arguments_are_refused(bench):
    done, _ = bench( "--device", "cpu", "--smoke", "--parts", "deepcache,nope")
    assert done.returncode == 2 and "nope" in done.stderr


@pytest.mark.parametrize("name, parameters", [
    ("sd15_unet", 859_520_964), ("sdxl_unet", 2_567_463_684), ("sdxl_text_encoder_2", 694_659_840),
    ("sam_b", 93_735_472), ("sam_h", 641_090_608), ("dinov2_b14", 86_580_480), ("clip_h14", 986_109_441),
    ("ip_image_encoder_h", 632_076_800), ("ip_image_encoder_bigg", 1_844_907_264),  # IP-Adapter SDXL's ViT-bigG/14
])
def test_full_size_models_are_the_published_architectures(name, parameters):
    model = full_size_model(name, "meta", torch.float16)  # no memory, no compute
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert next(model.parameters()).dtype == torch.float16 and not model.training


def test_story_sdxl_memory_part_runs_its_cpu_dry_run(bench):
    """#27: the part measuring Story SDXL 1024^2 peak memory on a GPU goes through the same code on tiny models."""
    done, report = bench("--device", "cpu", "--smoke", "--parts", "story_sdxl", "--budget-s", "3000")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    body = _sections(report)["7. Story on SDXL 1024^2: peak memory with the memory options"]
    assert body.count("| ") >= 4 and "Failed" not in body and "not run" not in body
    assert ("| sdxl preset, memory options on, 2 characters | VAE tiling on, image encoder on the CPU between rounds "
            "on") in body


def test_default_models_follow_the_engines_defaults():
    models = gpu.default_models()
    assert models["trident"] == ["clip_b16", "dino_b16", "sam_b"]
    assert {"ip_adapter_sd15", "ip_image_encoder_h", "sd15_unet"} <= set(models["story"])
    assert "sd15_unet" in models["generate"] and "dinov2_b14" in models["ipseg"]


def test_device_command_installs_what_the_wheel_script_collects():
    script = (ROOT / "bench" / "gpu-wheels.sh").read_text()
    install = re.search(r'echo "(python3 -m pip install .*?)"\n', script).group(1).replace("$dest", ".whl")
    assert gpu.DEVICE_COMMAND.startswith(install)
    assert len(gpu.DEVICE_COMMAND) <= 2000 and "--out $OUT/gpu.md" in gpu.DEVICE_COMMAND
    for name in ("diffusers", "open_clip_torch", "segment-anything", "DeepCache", "ftfy"):
        assert name in script


def test_bit_identity_counts_nan_bits():
    a = torch.tensor([1.0, float("nan")], dtype=torch.float16)
    assert same_bits(a, a.clone()) and not torch.equal(a, a.clone())
    assert not same_bits(a, torch.tensor([1.0, 2.0], dtype=torch.float16))
