"""`hf-nanochat push FOLDER REPO_ID`: share a model on the Hugging Face Hub.

The uploaded folder is self-contained: safetensors weights, `config.json` with `auto_map`, the
two model code files (so `trust_remote_code=True` works where hf_nanochat is not installed),
the tokenizer with its chat template and its code file (its injection-safe `apply_chat_template`
travels too), the generation config, and a model card whose Hub
metadata and usage snippets are filled in. `--dry-run DIR` writes exactly that folder and
uploads nothing. The upload itself is huggingface_hub's `create_repo` + `upload_folder`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, ModelCardData

from hf_nanochat.data.provenance import DATA_RECORD, describe_stage, hub_datasets, read_stage_records
from hf_nanochat.model_folder import check_weights, match_permissions
from hf_nanochat.modeling.configuration_nanochat_gpt import NanoChatGPTConfig

DEFAULT_TAGS = ["nanochat", "hf-nanochat", "text-generation", "custom_code"]
REPORT_FILE = "report.md"  # written by the speedrun next to the final checkpoint
REPORT_PLOT = "report_loss.png"
CORE_FILE = "core_eval.json"  # written into a base model's folder by `hf-nanochat eval MODEL --kind core`


class MissingTokenError(RuntimeError):
    """No Hugging Face token in any of the usual places."""


def resolve_token(token: str | None = None) -> str:
    """An explicit token, else huggingface_hub's lookup (HF_TOKEN, then `hf auth login`'s file)."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise MissingTokenError(
            "no Hugging Face token found: run `hf auth login`, or set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens)"
        )
    return token


# ---------------------------------------------------------------------------- the folder


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def build_upload_folder(
    folder: str | Path,
    out: str | Path,
    repo_id: str,
    license: str | None = None,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    tags: list[str] | None = None,
) -> Path:
    """Write into `out` exactly what `push` uploads for the model folder `folder`."""
    from hf_nanochat.modeling.modeling_nanochat_gpt import NanoChatGPTForCausalLM
    from hf_nanochat.modeling.tokenization_nanochat_gpt import NanoChatTokenizer

    folder, out = Path(folder), Path(out)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a folder written by save_pretrained")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != NanoChatGPTConfig.model_type:
        raise ValueError(f"{folder} holds a {model_type!r} model; push expects {NanoChatGPTConfig.model_type!r}")
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json: save the tokenizer next to the model")
    check_weights(folder)  # a truncated safetensors file, named
    if not _has_chat_template(folder):
        raise ValueError(f"the tokenizer in {folder} has no chat template")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; the upload folder must hold only what is uploaded")
    out.mkdir(parents=True, exist_ok=True)

    # Re-saving (not copying) guarantees safetensors, auto_map and current copies of the code
    # files, for the tokenizer too (also for folders saved before it carried its code).
    model = NanoChatGPTForCausalLM.from_pretrained(folder, dtype="auto")
    model.save_pretrained(out)
    NanoChatTokenizer.from_pretrained(folder).save_pretrained(out)
    match_permissions(out)  # safetensors writes 0600; the rest is 0644
    report = (folder / REPORT_FILE).read_text() if (folder / REPORT_FILE).is_file() else None
    # The card names the data the stages recorded reading (data_used.json), never a default.
    stages = read_stage_records(folder)
    if stages:
        shutil.copy2(folder / DATA_RECORD, out / DATA_RECORD)
    if report is not None and (folder / REPORT_PLOT).is_file():
        shutil.copy2(folder / REPORT_PLOT, out / REPORT_PLOT)  # the report links to it
    core = json.loads((folder / CORE_FILE).read_text()) if (folder / CORE_FILE).is_file() else None
    if core is not None:
        shutil.copy2(folder / CORE_FILE, out / CORE_FILE)
    card = model_card(
        repo_id, model, report, core=core,
        license=license, datasets=hub_datasets(stages) if datasets is None else datasets, base_model=base_model,
        tags=DEFAULT_TAGS + [t for t in (tags or []) if t not in DEFAULT_TAGS], stages=stages,
    )
    (out / "README.md").write_text(card)
    return out


# ---------------------------------------------------------------------------- the model card


def model_table(model) -> str:
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    return "\n".join(
        [
            "| nanochat architecture | depth | width | heads | kv heads | head dim | vocab | context | parameters | weights |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {c.nanochat_architecture} | {c.num_hidden_layers} | {c.hidden_size} | {c.num_attention_heads} | {c.num_key_value_heads} | "
            f"{c.head_dim} | {c.vocab_size:,} | {c.max_position_embeddings:,} | {params:,} | {str(model.dtype).removeprefix('torch.')} |",
        ]
    )


def usage_snippets(repo_id: str) -> str:
    """Copy-paste usage; tests run these very blocks against a local copy of the repo."""
    fence = "```"
    return f"""## Usage

### transformers

{fence}python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
messages = [{{"role": "user", "content": "Why is the sky blue?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
{fence}

### pipeline

{fence}python
from transformers import pipeline

chat = pipeline("text-generation", model="{repo_id}", trust_remote_code=True)
reply = chat([{{"role": "user", "content": "Why is the sky blue?"}}], max_new_tokens=64, do_sample=False)
print(reply[0]["generated_text"][-1]["content"])
{fence}

### Chat in the browser (Gradio)

With hf-nanochat installed (`pip install -e .` in a checkout of it):

{fence}bash
python -m hf_nanochat.serve.app --model {repo_id}
{fence}
"""


def _core_section(core: dict | None) -> str:
    """The model's CORE table (hf_nanochat.evaluate.core), one heading level below the card's."""
    if core is None:
        return ""
    from hf_nanochat.evaluate.core import markdown_table

    title = "Offline smoke bundle (not CORE)" if core.get("smoke_bundle") else "CORE (DCLM, nanochat's base-model metric)"
    return markdown_table(core, title) + "\n"


def model_card(
    repo_id: str,
    model,
    report: str | None,
    license: str | None,
    datasets: list[str],
    base_model: str | None,
    tags: list[str],
    core: dict | None = None,
    stages: dict[str, dict] | None = None,
) -> str:
    """README.md text: Hub metadata (YAML front matter) + shape + CORE + training report + usage."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,  # None leaves it out: the weights' license is the owner's to state (--license)
        tags=tags,
        datasets=datasets or None,
        base_model=base_model,
        language=["en"],
    )
    name = repo_id.split("/")[-1]
    depth = model.config.num_hidden_layers
    if report:
        # The report's own headings sit two levels below the card's "## Training report".
        demoted = "\n".join("##" + line if line.startswith("#") else line for line in report.strip().splitlines())
        report_section = "## Training report\n\n" + demoted + "\n"
    else:
        report_section = (
            "## Training report\n\nThis folder came without a training report (`report.md`); "
            "the shape above is read from `config.json`.\n"
        )
    if stages:
        data_section = "## Training data\n\nWhat each stage read (from `data_used.json`):\n\n" + "\n".join(
            line for stage, record in stages.items() for line in describe_stage(stage, record)) + "\n"
    else:
        data_section = "## Training data\n\nThis folder does not record its training data (no `data_used.json`).\n"
    body = f"""# {name}

A depth-{depth} GPT in the architecture of Karpathy's [nanochat](https://github.com/karpathy/nanochat),
trained and packaged with hf-nanochat. The model code travels with the weights: load it with
`trust_remote_code=True`, no extra package needed.

{model_table(model)}

{_core_section(core)}{data_section}
{report_section}
{usage_snippets(repo_id)}"""
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


# ---------------------------------------------------------------------------- upload


def push(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload nanochat model with hf-nanochat",
    **card_kwargs,
):
    """Build the upload folder in a temporary directory and upload it; returns the CommitInfo."""
    token = resolve_token(token)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        build_upload_folder(folder, staging, repo_id, **card_kwargs)  # fail before touching the Hub
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id, folder_path=staging, revision=revision, commit_message=commit_message, repo_type="model"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a save_pretrained folder of ours with its tokenizer (and report.md)")
    parser.add_argument("repo_id", help="e.g. your-name/nanochat-d20")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing); default main")
    parser.add_argument("--dry-run", metavar="DIR", help="write the exact upload folder to DIR and upload nothing")
    parser.add_argument("--license", default=None, help="Hub license id for the weights, e.g. mit or apache-2.0 "
                        "(default: none stated; nanochat's code is MIT, the weights' license is yours to choose)")
    parser.add_argument("--dataset", action="append", dest="datasets", help="training dataset id (repeatable; "
                        "default: the Hub datasets the folder's data_used.json records)")
    parser.add_argument("--base-model", help="the model this one was fine-tuned from, if any")
    parser.add_argument("--tag", action="append", dest="tags", help="extra Hub tag (repeatable)")


def run(args: argparse.Namespace) -> int:
    card = dict(license=args.license, datasets=args.datasets, base_model=args.base_model, tags=args.tags)
    if args.dry_run:
        out = build_upload_folder(args.folder, args.dry_run, args.repo_id, **card)
        print(f"dry run: wrote the upload folder to {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
        return 0
    try:
        info = push(args.folder, args.repo_id, private=args.private, revision=args.revision, **card)
    except MissingTokenError as err:
        print(f"error: {err}")
        return 2
    print(f"pushed to {info.commit_url}")
    return 0
