"""`hf-nanochat push`: the exact upload folder, the exact huggingface_hub calls, no network."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from hub_standin import HubStandIn
from isolated import run_without_hf_nanochat
from trained_folder import REPORT, make_trained_folder

from hf_nanochat import NanoChatGPTForCausalLM
from hf_nanochat.cli import main as cli_main
from hf_nanochat.share.hub import MissingTokenError, build_upload_folder, push

REPO = "someone/nanochat-d2-test"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_trained_folder(tmp_path_factory.mktemp("trained"))


def test_dry_run_writes_the_upload_folder(model_folder, tmp_path):
    out = tmp_path / "upload"
    assert cli_main(["push", str(model_folder), REPO, "--dry-run", str(out), "--dataset", "HuggingFaceTB/smol-smoltalk",
                     "--base-model", "someone/nanochat-d2-base"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "configuration_nanochat_gpt.py", "modeling_nanochat_gpt.py",
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenization_nanochat_gpt.py",
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_gpt.NanoChatGPTForCausalLM"
    assert (out / "chat_template.jinja").read_text() == (model_folder / "chat_template.jinja").read_text()
    card = ModelCard((out / "README.md").read_text())
    assert card.data.library_name == "transformers" and card.data.license is None  # not asked for: not claimed
    assert "license:" not in (out / "README.md").read_text().split("---")[1]
    assert card.data.datasets == ["HuggingFaceTB/smol-smoltalk"]
    assert card.data.base_model == "someone/nanochat-d2-base"
    assert "nanochat" in card.data.tags and card.data.pipeline_tag == "text-generation"
    assert REPORT.strip() in card.text
    params = sum(p.numel() for p in NanoChatGPTForCausalLM.from_pretrained(model_folder).parameters())
    assert f"| 2 | 64 | 2 | 2 | 32 | {config['vocab_size']:,} | 128 | {params:,} | float32 |" in card.text
    assert f"python -m hf_nanochat.serve.app --model {REPO}" in card.text
    with pytest.raises(FileExistsError):  # never mixes with stale files
        build_upload_folder(model_folder, out, REPO)


def test_card_without_report_states_it(model_folder, tmp_path):
    folder = tmp_path / "noreport"
    folder.mkdir()
    for f in model_folder.iterdir():
        if f.name != "report.md":
            (folder / f.name).write_bytes(f.read_bytes())
    text = (build_upload_folder(folder, tmp_path / "up", REPO) / "README.md").read_text()
    assert "without a training report" in text
    assert ModelCard(text).data.datasets is None and "does not record its training data" in text  # no guessed datasets


def test_card_names_the_data_each_stage_recorded(model_folder, tmp_path):
    from hf_nanochat.data.provenance import DATA_RECORD, write_stage_record

    folder = tmp_path / "recorded"
    folder.mkdir()
    for f in model_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    write_stage_record(folder, "base", {"source": "karpathy/fineweb-edu-100b-shuffle", "hub_dataset": "karpathy/fineweb-edu-100b-shuffle",
                                        "offline_corpus": False, "files": 1823, "text_column": "text"})
    write_stage_record(folder, "sft", {"loss_tokens": "assistant", "eval": [], "train": [
        {"source": "smoltalk", "split": "train", "stop": 10000, "rows": 10000, "hub_dataset": "HuggingFaceTB/smol-smoltalk"},
        {"source": "identity", "path": "identity_conversations.jsonl", "rows": 1000, "hub_dataset": None}]})
    out = build_upload_folder(folder, tmp_path / "up", REPO)
    text = (out / "README.md").read_text()
    assert ModelCard(text).data.datasets == ["karpathy/fineweb-edu-100b-shuffle", "HuggingFaceTB/smol-smoltalk"]
    assert "- base: `karpathy/fineweb-edu-100b-shuffle`, 1823 files" in text
    assert "  - train: identity from `identity_conversations.jsonl`: 1,000 rows" in text
    assert (out / DATA_RECORD).read_text() == (folder / DATA_RECORD).read_text()


def test_refuses_folders_it_cannot_share(model_folder, tmp_path):
    bare = tmp_path / "bare"
    NanoChatGPTForCausalLM.from_pretrained(model_folder).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        build_upload_folder(bare, tmp_path / "x", REPO)


def test_push_passes_exact_operations_to_huggingface_hub(model_folder, monkeypatch, tmp_path):
    calls = []

    def recorder(name):
        def method(self, **kwargs):
            calls.append({"op": name, "token": self.token, **kwargs})
            if name == "upload_folder":  # the staging dir is deleted after the call: snapshot it now
                staged = Path(kwargs["folder_path"])
                calls[-1]["files"] = {p.name: p.read_bytes() for p in staged.iterdir()}
                return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")
        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert cli_main(["push", str(model_folder), REPO, "--private", "--revision", "v1"]) == 0
    upload = calls[2]
    staged = upload.pop("files")
    assert calls[:2] == [
        {"op": "create_repo", "token": "hf_test_token", "repo_id": REPO, "private": True, "exist_ok": True, "repo_type": "model"},
        {"op": "create_branch", "token": "hf_test_token", "repo_id": REPO, "branch": "v1", "exist_ok": True, "repo_type": "model"},
    ]
    assert upload == {"op": "upload_folder", "token": "hf_test_token", "repo_id": REPO, "folder_path": upload["folder_path"],
                      "revision": "v1", "commit_message": "Upload nanochat model with hf-nanochat", "repo_type": "model"}
    # what was uploaded is byte for byte the dry-run folder
    build_upload_folder(model_folder, tmp_path / "dry", REPO)
    assert staged == {p.name: p.read_bytes() for p in (tmp_path / "dry").iterdir()}


def test_missing_token_is_a_clear_error_before_any_upload(model_folder, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("must not reach the Hub"))
    with pytest.raises(MissingTokenError, match="hf auth login"):
        push(model_folder, REPO)
    assert cli_main(["push", str(model_folder), REPO]) == 2
    assert "no Hugging Face token found" in capsys.readouterr().out


def _usage_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_dry_run_folder_works_without_hf_nanochat(model_folder, tmp_path):
    """A fresh process that cannot import hf_nanochat runs the card's own usage snippets on the
    folder and reproduces our logits."""
    out = build_upload_folder(model_folder, tmp_path / "upload", REPO)
    blocks = _usage_blocks((out / "README.md").read_text())
    assert len(blocks) == 2  # transformers + pipeline
    x = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = NanoChatGPTForCausalLM.from_pretrained(model_folder)(x).logits
    torch.save({"x": x, "expected": expected}, tmp_path / "probe.pt")
    code = "\n".join(b.replace(f'"{REPO}"', repr(str(out))) for b in blocks) + f"""
import torch
probe = torch.load({str(tmp_path / "probe.pt")!r})
with torch.no_grad():
    got = model(probe["x"]).logits
torch.testing.assert_close(got, probe["expected"], atol=1e-5, rtol=0)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(tokenizer).__name__ == "NanoChatTokenizer", type(tokenizer)  # the injection-safe one
assert type(tokenizer).__module__.startswith("transformers_modules"), type(tokenizer).__module__
print("LOGITS-OK")
"""
    result = run_without_hf_nanochat(code, cwd=str(tmp_path))
    assert "LOGITS-OK" in result.stdout


@pytest.fixture
def hub_standin(monkeypatch):
    """huggingface_hub pointed at a stand-in server on 127.0.0.1 (offline mode lifted for it only)."""
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as transformers_hub

    with HubStandIn() as standin:
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "ENDPOINT", standin.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", standin.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(transformers_hub, "_hf_api", HfApi(endpoint=standin.url))
        monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
        yield standin
    assert not standin.unknown, standin.unknown


def _materialise(files: dict[str, bytes], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_model_push_to_hub_uploads_a_loadable_repo(model_folder, hub_standin, tmp_path):
    """PreTrainedModel.push_to_hub (transformers' own path) over real HTTP to the stand-in."""
    model = NanoChatGPTForCausalLM.from_pretrained(model_folder)
    model.push_to_hub(REPO, private=True)
    assert hub_standin.created == [{"name": "nanochat-d2-test", "organization": "someone", "visibility": "private"}]
    files = hub_standin.repos[f"{REPO}@main"]
    assert {"config.json", "model.safetensors", "configuration_nanochat_gpt.py", "modeling_nanochat_gpt.py"} <= set(files)
    assert "Bearer hf_standin_token" in hub_standin.auth
    repo = _materialise(files, tmp_path / "repo")
    x = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.save({"x": x, "expected": model(x).logits}, tmp_path / "probe.pt")
    result = run_without_hf_nanochat(f"""
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(repo)!r}, trust_remote_code=True)
probe = torch.load({str(tmp_path / "probe.pt")!r})
with torch.no_grad():
    torch.testing.assert_close(model(probe["x"]).logits, probe["expected"], atol=1e-5, rtol=0)
print("PUSHED-OK")
""", cwd=str(tmp_path))
    assert "PUSHED-OK" in result.stdout


def test_push_command_over_http_matches_dry_run(model_folder, hub_standin, tmp_path):
    assert cli_main(["push", str(model_folder), REPO, "--revision", "exp"]) == 0
    build_upload_folder(model_folder, tmp_path / "dry", REPO)
    assert hub_standin.repos[f"{REPO}@exp"] == {p.name: p.read_bytes() for p in (tmp_path / "dry").iterdir()}


def test_speedrun_report_is_embedded_with_its_plot(model_folder, tmp_path):
    import shutil

    folder = tmp_path / "withplot"
    shutil.copytree(model_folder, folder)
    (folder / "report.md").write_text("# nanochat training report: tiny\n\n## Base model\n\n- val bpb: 2.41\n\n![loss](report_loss.png)\n")
    (folder / "report_loss.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    out = build_upload_folder(folder, tmp_path / "upload", REPO)
    card = (out / "README.md").read_text()
    # The report's headings sit under the card's "## Training report", never above it.
    assert "\n### nanochat training report: tiny\n" in card and "\n#### Base model\n" in card
    assert "\n# nanochat training report" not in card
    assert (out / "report_loss.png").read_bytes() == (folder / "report_loss.png").read_bytes()


def test_license_only_when_asked_and_weights_readable_like_the_rest(model_folder, tmp_path):
    import stat

    out = build_upload_folder(model_folder, tmp_path / "mit", REPO, license="apache-2.0")
    assert ModelCard((out / "README.md").read_text()).data.license == "apache-2.0"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes  # safetensors alone wrote 0600
