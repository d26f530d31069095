"""From other projects: a pushed folder used by code that has never heard of hf_nanochat.

In a process where `import hf_nanochat` fails: AutoModelForCausalLM + AutoTokenizer with
trust_remote_code, apply_chat_template + generate, pipeline("text-generation"), PEFT LoRA
(and a training step on it), and device_map="auto" loading - each checked against numbers
computed here with hf_nanochat.
"""
import pytest
import torch
from isolated import run_without_hf_nanochat
from trained_folder import make_trained_folder

from hf_nanochat import NanoChatGPTForCausalLM
from hf_nanochat.share.hub import build_upload_folder
from hf_nanochat.data.tokenizer import load_tokenizer, render_for_completion

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
NEW_TOKENS = 16


@pytest.mark.slow
def test_hub_folder_in_another_project(tmp_path):
    folder = build_upload_folder(make_trained_folder(tmp_path / "trained"), tmp_path / "repo", "someone/nanochat-d2")
    model = NanoChatGPTForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([render_for_completion(load_tokenizer(str(folder)), QUESTION)])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        logits = model(prompt).logits
    torch.save({"prompt": prompt, "generated": generated, "logits": logits}, tmp_path / "expected.pt")

    result = run_without_hf_nanochat(f"""
import re
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from peft import LoraConfig, get_peft_model

folder, expected = {str(folder)!r}, torch.load({str(tmp_path / "expected.pt")!r})
question = {QUESTION!r}
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()

# chat template + generate: nanochat's rendering, our greedy tokens
inputs = tok.apply_chat_template(question, add_generation_prompt=True, return_dict=True, return_tensors="pt")
assert torch.equal(inputs["input_ids"], expected["prompt"]), inputs["input_ids"]
out = model.generate(**inputs, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, do_sample=False)
assert torch.equal(out, expected["generated"]), (out, expected["generated"])
reply = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

# pipeline: same reply as generate
chat = pipeline("text-generation", model=folder, trust_remote_code=True)
answer = chat(question, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, do_sample=False)
last = answer[0]["generated_text"][-1]
assert last["role"] == "assistant" and last["content"] == reply, (last, reply)

# PEFT LoRA on nanochat's module names: starts as the base model, trains only the adapters
base_logits = model(expected["prompt"]).logits.detach()
lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_q", "c_v"], task_type="CAUSAL_LM"))
trainable = {{n: p.detach().clone() for n, p in lora.named_parameters() if p.requires_grad}}
assert len(trainable) == 2 * 2 * 2 and all("lora_" in n for n in trainable), list(trainable)
assert sum(p.numel() for p in trainable.values()) == 2 * 2 * (4 * 64 + 64 * 4)
torch.testing.assert_close(lora(expected["prompt"]).logits, base_logits, atol=0, rtol=0)
frozen = {{n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}}
opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
loss = lora(input_ids=expected["generated"], labels=expected["generated"]).loss
loss.backward(); opt.step()
assert all(torch.equal(p, frozen[n]) for n, p in lora.named_parameters() if not p.requires_grad)
assert any(not torch.equal(p, trainable[n]) for n, p in lora.named_parameters() if p.requires_grad)

# device_map="auto" (accelerate's big-model loading). One CPU is one device, so memory is capped
# to force part of the model to disk: whole blocks are placed (_no_split_modules), same logits.
mapped = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, device_map="auto",
                                              max_memory={{"cpu": "500KB"}}, offload_folder={str(tmp_path / "offload")!r})
placement = mapped.hf_device_map
assert set(placement.values()) == {{"cpu", "disk"}}, placement
assert all(k in ("transformer.wte", "transformer.rotary_emb", "lm_head") or re.fullmatch(r"transformer\\.h\\.\\d+", k) for k in placement), placement
with torch.no_grad():
    torch.testing.assert_close(mapped(expected["prompt"]).logits, expected["logits"], atol=1e-5, rtol=0)
print("INTEROP-OK", placement, repr(reply))
""", cwd=str(tmp_path))
    assert "INTEROP-OK" in result.stdout
