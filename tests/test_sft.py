"""SFT trains on the assistant's turns, ends them with a token generation stops on, and refuses recipes that
would make a model that never stops."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import REPO_ROOT, load_script, save_small_llama
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llm_recipes.chat_template import check_chat_template
from llm_recipes.recipe import RecipeError

CHATML = REPO_ROOT / "recipes" / "templates" / "chatml.jinja"


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return AutoTokenizer.from_pretrained(tiny_tokenizer)


@pytest.fixture(scope="module")
def base_model(tiny_tokenizer, tmp_path_factory):
    """A small untrained Llama saved as a checkpoint; its generation config stops on <|endoftext|> only."""
    return save_small_llama(tiny_tokenizer, tmp_path_factory.mktemp("base"), max_position_embeddings=512)


def write_recipe(path, tiny_world, base_model, output_dir, extra=""):
    path.write_text(
        f"output_dir: {output_dir}\nmodel_name_or_path: {base_model}\nchat_template_path: {CHATML}\n"
        "eos_token: <|im_end|>\nassistant_only_loss: true\nmax_length: 512\n"
        f"dataset_mixture:\n  datasets:\n    - {{path: {tiny_world}/sft/train.jsonl, weight: 0.8}}\n"
        f"    - {{path: {tiny_world}/sft/tools_train.jsonl, weight: 0.2}}\n"
        f"  eval_datasets: [{tiny_world}/sft/test.jsonl]\n  max_examples: 400\n"
        "use_cpu: true\nbf16: false\nactivation_checkpointing: false\nseed: 5\nmax_steps: 40\n"
        "per_device_train_batch_size: 8\nper_device_eval_batch_size: 32\nlearning_rate: 3.0e-3\nwarmup_steps: 4\n"
        "eval_strategy: 'no'\neval_on_start: true\nlogging_steps: 10\nsave_strategy: steps\nsave_steps: 20\n"
        f"report_to: none\ndisable_tqdm: true\n{extra}"
    )
    return path


@pytest.fixture(scope="module")
def sft_model(tiny_world, base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    load_script("sft").main(["--config", str(write_recipe(out / "recipe.yaml", tiny_world, base_model, out / "model"))])
    return out / "model"


def conversation_batch(tokenizer, base_model, tiny_world, **config):
    """A collated batch of the first tool-calling conversation, as SFTTrainer builds it with these settings."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files=str(tiny_world / "sft" / "tools_train.jsonl"), split="train[:4]")
    args = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", eos_token="<|im_end|>",
                     chat_template_path=str(CHATML), max_length=512, **config)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base_model), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(base_model))
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer, examples


def test_collated_batch_labels_only_the_assistant_turns(tokenizer, base_model, tiny_world):
    trainer, examples = conversation_batch(tokenizer, base_model, tiny_world, assistant_only_loss=True)
    batch = trainer.data_collator(examples[:1])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    row = [json.loads(line) for line in (tiny_world / "sft" / "tools_train.jsonl").open()][0]["messages"]
    expression = row[1]["tool_calls"][0]["function"]["arguments"]["expression"]
    # The tool call and the answer, each with the <|im_end|> that ends the turn; not the system, user or tool turns.
    assert tokenizer.decode(ids[labels != -100]) == (
        f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call><|im_end|>'
        f"{row[3]['content']}<|im_end|>"
    )
    untrained = tokenizer.decode(ids[labels == -100])
    assert "You can call these tools" in untrained and row[0]["content"] in untrained
    assert "<|im_start|>tool" in untrained


def test_padding_free_packing_on_cpu_attention_gives_the_padded_loss(tokenizer, base_model, tiny_world):
    # With sdpa (the CPU default) Transformers keeps packed conversations apart by a mask built from position ids.
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer, examples = conversation_batch(tokenizer, base_model, tiny_world, assistant_only_loss=True)
    model = trainer.model.eval()
    losses = {}
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=padding_free)(examples)
        with torch.no_grad():
            losses[padding_free] = model(**batch).loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_sft_lowers_held_out_loss(sft_model):
    summary = json.loads((sft_model / "stage_complete.json").read_text())
    assert summary["eval_loss"] < 0.6 * summary["eval_loss_before"]
    assert summary["eval_mean_token_accuracy"] > summary["eval_mean_token_accuracy_before"]


def test_saved_model_reloads_and_generation_stops_on_end_of_turn(sft_model):
    model = AutoModelForCausalLM.from_pretrained(sft_model)
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert end_of_turn in model.generation_config.eos_token_id
    assert "{% generation %}" in tokenizer.chat_template
    assert not list(sft_model.glob("*.bin"))  # the final folder holds no pickles


def test_resumed_run_ends_with_identical_weights(sft_model, tiny_world, base_model, tmp_path, capsys):
    # A run killed after its checkpoint at step 20, launched again.
    resumed = tmp_path / "resumed"
    shutil.copytree(sft_model / "checkpoint-20", resumed / "checkpoint-20")
    load_script("sft").main(["--config", str(write_recipe(tmp_path / "r.yaml", tiny_world, base_model, resumed))])
    assert "Resuming from" in capsys.readouterr().out
    uninterrupted, continued = load_file(sft_model / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, weight in uninterrupted.items():
        assert torch.equal(weight, continued[name]), name


def test_lora_adapter_reloads_with_peft(tiny_world, base_model, tmp_path):
    from peft import PeftModel

    recipe = write_recipe(tmp_path / "lora.yaml", tiny_world, base_model, tmp_path / "lora",
                          extra="use_peft: true\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: all-linear\n")
    load_script("sft").main(["--config", str(recipe), "--max_steps", "5", "--learning_rate", "1.0e-2",
                             "--eval_on_start", "false", "--save_strategy", "no"])
    out = tmp_path / "lora"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(base_model)
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, out)(ids).logits
    assert not torch.allclose(before, adapted)  # the adapter was trained and is applied
    end_of_turn = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in GenerationConfig.from_pretrained(out).eos_token_id


def test_4bit_on_a_machine_without_cuda_is_refused_before_loading(tiny_world, tmp_path):
    recipe = write_recipe(tmp_path / "qlora.yaml", tiny_world, tmp_path / "no-such-model", tmp_path / "out",
                          extra="use_peft: true\nload_in_4bit: true\n")
    with pytest.raises(RecipeError, match="load_in_4bit.*CUDA"):
        load_script("sft").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_attention_that_mixes_packed_sequences_is_refused(tiny_world, base_model, tmp_path):
    recipe = write_recipe(tmp_path / "packed.yaml", tiny_world, base_model, tmp_path / "out",
                          extra="packing: true\nattn_implementation: paged|sdpa\n")
    with pytest.raises(RecipeError, match="attn_implementation.*padding-free"):
        load_script("sft").main(["--config", str(recipe)])


def test_recipe_without_end_of_turn_eos_is_refused_before_training(tiny_world, base_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_world, base_model, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace("eos_token: <|im_end|>\n", ""))
    with pytest.raises(RecipeError, match="eos_token: \"<\\|im_end\\|>\""):
        load_script("sft").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_dry_run_sizes_the_run_and_trains_nothing(tiny_world, base_model, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_world, base_model, tmp_path / "out")
    load_script("sft").main(["--config", str(recipe), "--dry_run"])
    printed = capsys.readouterr().out
    assert "per optimizer step:      8 conversations" in printed and "total steps:             40" in printed
    assert not (tmp_path / "out").exists()


# The chat-template check, one failure at a time, on the ChatML tokenizer (EOS <|endoftext|>, pad <|pad|>).

@pytest.fixture
def chatml(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.chat_template = CHATML.read_text()
    return tokenizer


def stops_on(*tokens, tokenizer):
    return GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in tokens])


def test_check_passes_when_eos_token_is_the_end_of_turn(chatml):
    generation = stops_on("<|endoftext|>", tokenizer=chatml)
    assert check_chat_template(chatml, generation, assistant_only_loss=True, eos_token="<|im_end|>") == "<|im_end|>"


def test_check_refuses_a_tokenizer_without_chat_template(chatml):
    chatml.chat_template = None
    with pytest.raises(RecipeError, match="no chat template.*chat_template_path"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml))


def test_check_refuses_an_eos_that_is_not_the_end_of_turn(chatml):
    with pytest.raises(RecipeError, match="ends an assistant turn with '<\\|im_end\\|>'.*EOS is '<\\|endoftext\\|>'"
                       ".*eos_token"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml))


def test_check_refuses_a_generation_config_that_does_not_stop_on_the_end_of_turn(chatml):
    chatml.eos_token = "<|im_end|>"  # the tokenizer is right, the model's generation config is not
    with pytest.raises(RecipeError, match="generation_config.eos_token_id.*does not include '<\\|im_end\\|>'"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml))


def test_check_refuses_a_pad_token_that_is_the_eos(chatml):
    with pytest.raises(RecipeError, match="pad token is '<\\|im_end\\|>'.*`pad_token`"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml), eos_token="<|im_end|>",
                            pad_token="<|im_end|>")


def test_check_refuses_assistant_only_loss_without_generation_marks(chatml):
    chatml.chat_template = CHATML.read_text().replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    with pytest.raises(RecipeError, match="generation %}.*chat_template_path"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml), assistant_only_loss=True,
                            eos_token="<|im_end|>")


def test_check_refuses_a_generation_block_that_leaves_out_the_end_of_turn(chatml):
    template = CHATML.read_text().replace("{{- '<|im_end|>' }}\n{%- endgeneration %}", "{%- endgeneration %}"
                                          "{{- '<|im_end|>' }}")
    assert template != CHATML.read_text()
    chatml.chat_template = template
    with pytest.raises(RecipeError, match="never learns to stop"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml), assistant_only_loss=True,
                            eos_token="<|im_end|>")


def test_check_refuses_a_template_without_an_end_of_turn_token(chatml):
    chatml.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(RecipeError, match="no special token"):
        check_chat_template(chatml, stops_on("<|endoftext|>", tokenizer=chatml))


SFT_RECIPES = sorted((REPO_ROOT / "recipes").rglob("sft*.yaml"))


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sft_recipes_name_an_existing_chat_template(recipe):
    template = yaml.safe_load(recipe.read_text()).get("chat_template_path")
    assert template is None or (REPO_ROOT / template).is_file()


def test_lm_eval_tasks_are_scored_during_sft(tiny_world, base_model, tmp_path, monkeypatch):
    # The README says `lm_eval_tasks` works in any stage that generates; SFT once ignored it without a word.
    # The task reads runs/tiny/data/eval/ below the working directory, as in the tiny chain.
    (tmp_path / "runs/tiny").mkdir(parents=True)
    (tmp_path / "runs/tiny/data").symlink_to(tiny_world)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, base_model, tmp_path / "model",
                          extra="lm_eval_tasks: [tiny_multiple_choice]\nlm_eval_limit: 2\n")
    recipe.write_text(recipe.read_text().replace("max_steps: 40", "max_steps: 2").replace("save_steps: 20",
                                                                                         "save_steps: 2"))
    load_script("sft").main(["--config", str(recipe)])
    history = json.loads((tmp_path / "model" / "trainer_state.json").read_text())["log_history"]
    scored = [h for h in history if "lm_eval/tiny_multiple_choice/acc" in h]
    assert scored and scored[0]["step"] == 0  # eval_on_start: the base model is scored too
