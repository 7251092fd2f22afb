"""Chat with any checkpoint in the terminal, through its chat template, the reply streamed token by token.

    python scripts/chat.py --model_name_or_path runs/tiny/export
    python scripts/chat.py --model_name_or_path Qwen/Qwen3-0.6B --adapter_name_or_path runs/qwen3/sft-lora

Type a message and press Enter. `/reset` starts the conversation again, `/exit` (or end of input) leaves. Lines
read from a pipe work the same, so a conversation can be scripted: `printf 'What is 2 + 3?\\n' | python ...`.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from llm_recipes import stage
from llm_recipes.recipe import RecipeError, RecipeParser


@dataclass
class ChatArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "The model to chat with (a folder or Hub id)."})
    adapter_name_or_path: str | None = field(default=None, metadata={"help": "A peft adapter on top of the model."})
    system_prompt: str | None = field(default=None, metadata={"help": "A system message opening the conversation."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply, in tokens."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 answers greedily."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling, when temperature > 0."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code shipped with a checkpoint."})


ARGUMENTS = (ChatArguments,)


def load(args: ChatArguments):
    tokenizer = AutoTokenizer.from_pretrained(args.adapter_name_or_path or args.model_name_or_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{args.model_name_or_path}: the tokenizer has no chat template to chat through.")
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if args.adapter_name_or_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter_name_or_path)
    return tokenizer, model.eval()


def reply(model, tokenizer, messages: list[dict], args: ChatArguments, streamer=None) -> str:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p) if args.temperature > 0 \
        else dict(do_sample=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, streamer=streamer,
                                pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    if not args.model_name_or_path:
        raise RecipeError("model_name_or_path is required (--model_name_or_path FOLDER_OR_HUB_ID).")
    tokenizer, model = load(args)
    opening = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    messages = list(opening)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = list(opening)
            print("(conversation reset)")
            continue
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        answer = reply(model, tokenizer, messages, args, streamer)
        messages.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
    stage.run(main)
