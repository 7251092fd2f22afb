"""Chat templates: checking, before SFT spends any compute, that a trained model will know where its turn ends.

A chat model stops generating when it emits the token its template closes an assistant turn with (`<|im_end|>` in
ChatML). Three mistakes make a model that never stops, and none of them shows in the training loss:

- the tokenizer's EOS (and the model's `generation_config.eos_token_id`, which `generate` stops on) is the
  pretraining end-of-document token, not the end-of-turn token;
- the pad token is the EOS, so that whatever masks padding by its id also masks every EOS label;
- with an assistant-only loss, the template's `{% generation %}` block leaves the end-of-turn token out, so it is
  never a label.

`check_chat_template` finds each of these and names the recipe key that fixes it.
"""

import logging

from trl import get_training_chat_template
from trl.chat_template_utils import has_generation_markers

from llm_recipes.recipe import RecipeError

logger = logging.getLogger(__name__)

# Text no template adds or changes, to find where the assistant's content ends in a rendered conversation.
_PROBE = "PROBE-7f3a1c"


def stop_token_ids(generation_config) -> list[int]:
    """The token ids `generate` stops on (`eos_token_id` may be one id or a list)."""
    ids = generation_config.eos_token_id
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def _special_ids(tokenizer) -> set[int]:
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the tokenizer's chat template closes an assistant turn with, or None if it uses none."""
    messages = [
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": _PROBE},
        {"role": "user", "content": "pong"},  # some templates close a final assistant turn differently
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text.split(_PROBE, 1)[1].split("pong", 1)[0]
    special = _special_ids(tokenizer)
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    return None


def _stop_token_in_assistant_mask(tokenizer, end_of_turn: str, template: str | None) -> bool:
    """Whether the assistant-token mask (what an assistant-only loss trains on) covers the end-of-turn token."""
    messages = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": _PROBE},
                {"role": "user", "content": "pong"}]
    encoded = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    return any(m and i == eot_id for i, m in zip(ids, mask))


def check_chat_template(
    tokenizer, generation_config, assistant_only_loss: bool = False, eos_token: str | None = None,
    pad_token: str | None = None,
) -> str:
    """Check that a model trained on the tokenizer's chat template will stop after its turn; return the end-of-turn
    token. Raise a `RecipeError` that names the fixing recipe key otherwise.

    `eos_token` and `pad_token` are the recipe's keys of those names: SFTTrainer makes `eos_token` the tokenizer's
    EOS and adds it to `generation_config.eos_token_id`, and makes `pad_token` the tokenizer's pad token, so the
    check sees the tokenizer and generation config as training will leave them.
    """
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise RecipeError("The tokenizer has no chat template. Set `chat_template_path` to a Jinja template, "
                          "e.g. recipes/templates/chatml.jinja.")
    end_of_turn = end_of_turn_token(tokenizer)
    if end_of_turn is None:
        raise RecipeError("The chat template closes an assistant turn with no special token, so a trained model has "
                          "nothing to stop on. Set `chat_template_path` to a template that ends each assistant turn "
                          "with one, e.g. recipes/templates/chatml.jinja (<|im_end|>).")
    eos = eos_token or tokenizer.eos_token
    if eos != end_of_turn:
        raise RecipeError(
            f"The chat template ends an assistant turn with {end_of_turn!r}, but the tokenizer's EOS is {eos!r}: "
            f"the model would learn to end its turn with {end_of_turn!r} while generation stops only on {eos!r}, "
            f"and run on past its answer. Set `eos_token: \"{end_of_turn}\"` in the recipe (the trainer makes it the "
            "tokenizer's EOS and adds it to the model's generation_config.eos_token_id)."
        )
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    stops = stop_token_ids(generation_config) + ([eot_id] if eos_token else [])
    if eot_id not in stops:
        raise RecipeError(
            f"The model's generation_config.eos_token_id is {stop_token_ids(generation_config)}, which does not "
            f"include {end_of_turn!r} (id {eot_id}), the token the chat template ends an assistant turn with: "
            f"generation would not stop after an answer. Set `eos_token: \"{end_of_turn}\"` in the recipe (the "
            "trainer adds it to generation_config.eos_token_id)."
        )
    pad = pad_token or tokenizer.pad_token
    if pad == end_of_turn:
        raise RecipeError(
            f"The pad token is {pad!r}, the same token as the EOS: padding masked by its id masks every EOS label "
            "too, and the model never learns to stop. Set `pad_token` in the recipe to another special token of the "
            "tokenizer (e.g. `pad_token: \"<|endoftext|>\"` for ChatML), or use a tokenizer with its own pad token "
            "(`tokenizer_name_or_path`)."
        )
    if assistant_only_loss:
        _check_assistant_only_loss(tokenizer, template, end_of_turn)
    return end_of_turn


def _check_assistant_only_loss(tokenizer, template: str, end_of_turn: str) -> None:
    """With an assistant-only loss, the end-of-turn token must be inside the template's {% generation %} marks, or
    it is never a label."""
    training_template = None
    if not has_generation_markers(template):
        # TRL carries training versions (with the markers) of well-known templates and swaps them in.
        try:
            training_template = get_training_chat_template(tokenizer)
        except ValueError:
            raise RecipeError(
                "assistant_only_loss: true needs a chat template that marks the assistant's turns with "
                "{% generation %} ... {% endgeneration %}, and the tokenizer's template has no such marks. Set "
                "`chat_template_path: recipes/templates/chatml.jinja` (or another template with them), or "
                "`assistant_only_loss: false` to train on every token."
            ) from None
        logger.info("The chat template has no {%% generation %%} marks; TRL's training version of it is used.")
    if not _stop_token_in_assistant_mask(tokenizer, end_of_turn, training_template):
        raise RecipeError(
            f"The chat template's {{% generation %}} block ends before {end_of_turn!r}, so with "
            "assistant_only_loss the end-of-turn token is never a label and the model never learns to stop. "
            f"Move {end_of_turn!r} inside {{% generation %}} ... {{% endgeneration %}} in the template "
            "(`chat_template_path`), or set `assistant_only_loss: false`."
        )


def use_template_file(tokenizer, training_args) -> None:
    """Give the tokenizer the recipe's Jinja template (`chat_template_path`), if it names one."""
    from pathlib import Path

    from llm_recipes.recipe import repo_path

    if not training_args.chat_template_path:
        return
    template = Path(repo_path(training_args.chat_template_path))
    if template.suffix not in (".jinja", ".j2") or not template.is_file():
        raise RecipeError(f"chat_template_path: expects a Jinja file (.jinja), got "
                          f"{training_args.chat_template_path!r}.")
    training_args.chat_template_path = str(template)  # SFTTrainer reads it again, from any working directory
    tokenizer.chat_template = template.read_text()


def generation_config_of(model_args, trust_remote_code: bool = False):
    """The generation config the model will load with, read without loading its weights."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except OSError:  # no generation_config.json: from_pretrained derives one from the model config
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                            trust_remote_code=trust_remote_code)
        return GenerationConfig.from_model_config(config)


def check_turn_ending(tokenizer, model_args, training_args, trust_remote_code: bool = False) -> str:
    """`check_chat_template` on the checkpoint's generation config and the SFT recipe's keys; log and return the
    end-of-turn token."""
    generation_config = generation_config_of(model_args, trust_remote_code)
    end_of_turn = check_chat_template(tokenizer, generation_config, training_args.assistant_only_loss,
                                      training_args.eos_token, training_args.pad_token)
    stops = set(stop_token_ids(generation_config)) | {
        tokenizer.convert_tokens_to_ids(training_args.eos_token or end_of_turn)}
    logger.info("Chat template: an assistant turn ends with %s; generation stops on %s.", end_of_turn, sorted(stops))
    return end_of_turn
