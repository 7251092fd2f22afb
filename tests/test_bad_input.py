"""Bad input, as a demanding new user writes it, through the real scripts: each case exits non-zero with one error
message that names the file, row, key or value, without a traceback, before any model weights are loaded, and
leaves nothing half-written where it was pointed.

The cases run in one subprocess (tests/helpers/run_scripts.py runs each script as __main__, and makes loading
weights fail loudly); a few more run as separate processes, to see the exit status a shell sees.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, save_small_llama

CHATML = REPO_ROOT / "recipes/templates/chatml.jinja"


def flow(mapping: dict) -> str:
    return json.dumps(mapping)  # JSON is YAML: a mapping written on one line


def sft_recipe(data, model, out, **extra) -> str:
    keys = {"output_dir": str(out), "model_name_or_path": str(model), "chat_template_path": str(CHATML),
            "eos_token": "<|im_end|>", "max_length": 128, "use_cpu": True, "max_steps": 2,
            "per_device_train_batch_size": 2, "report_to": "none",
            "dataset_mixture": {"datasets": [{"path": str(data)}]}, **extra}
    return "\n".join(f"{key}: {flow(value)}" for key, value in keys.items() if value is not None) + "\n"


def conversation(*messages) -> str:
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in messages]}) + "\n"


GOOD_TURNS = conversation(("user", "What is 2 + 3?"), ("assistant", "The answer is 5."))


@pytest.fixture(scope="module")
def workspace(tiny_world, tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    model = save_small_llama(tiny_tokenizer, root / "model")  # 256 positions
    data = root / "data"
    data.mkdir()
    files = {
        "good.jsonl": GOOD_TURNS * 4,
        "empty.jsonl": "",
        "malformed.jsonl": GOOD_TURNS * 2 + '{"messages": [{"role": "user", "content": "hi"}\n',
        "content_null.jsonl": GOOD_TURNS + conversation(("user", None), ("assistant", "Hello.")),
        "content_number.jsonl": GOOD_TURNS + conversation(("user", "Count."), ("assistant", 5)),
        "unknown_role.jsonl": GOOD_TURNS + conversation(("robot", "Beep."), ("assistant", "Hello.")),
        "same_pair.jsonl": json.dumps({"prompt": [{"role": "user", "content": "Hi?"}],
                                       "chosen": [{"role": "assistant", "content": "Hello."}],
                                       "rejected": [{"role": "assistant", "content": "Hello."}]}) + "\n",
        "no_rejected.jsonl": json.dumps({"prompt": "Hi?", "chosen": "Hello."}) + "\n",
        "prompts_no_answer.jsonl": json.dumps({"prompt": [{"role": "user", "content": "1 + 1?"}]}) + "\n",
        "web_ok.jsonl": "".join(json.dumps({"id": str(i), "text": f"Page {i} about bread."}) + "\n" for i in range(5)),
    }
    for name, text in files.items():
        (data / name).write_text(text)
    cafe = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'  # Latin-1, not UTF-8
    (data / "not_utf8.jsonl").write_bytes(GOOD_TURNS.encode() + cafe)
    (data / "web_bad_byte.jsonl").write_bytes(files["web_ok.jsonl"].encode() + b'{"id": "9", "text": "caf\xe9"}\n')
    (data / "web_bad_json.jsonl").write_text(files["web_ok.jsonl"] + '{"id": "9", "text": \n')
    (root / "a_file").write_text("not a folder\n")
    return {"root": root, "model": model, "data": data, "world": tiny_world, "tokenizer": tiny_tokenizer}


def cases(ws) -> list[dict]:
    """(name, script, recipe text or None, extra argv, env, a fragment the message must hold)."""
    root, data, model, world = ws["root"], ws["data"], ws["model"], ws["world"]
    good = data / "good.jsonl"

    def sft(name, fragment, env=None, argv=(), data_file=good, **extra):
        return dict(name=name, script="sft.py", recipe=sft_recipe(data_file, model, root / name / "out", **extra),
                    argv=list(argv), env=env or {}, fragment=fragment)

    def raw(name, script, recipe, fragment, argv=(), env=None):
        return dict(name=name, script=script, recipe=recipe, argv=list(argv), env=env or {}, fragment=fragment)

    def stage(name, script, fragment, keys, argv=()):
        keys = {"output_dir": str(root / name / "out"), "use_cpu": True, "report_to": "none", **keys}
        text = "\n".join(f"{k}: {flow(v)}" for k, v in keys.items() if v is not None) + "\n"
        return raw(name, script, text, fragment, argv)

    prefs = {"datasets": [{"path": str(world / "preferences/train.jsonl"),
                           "columns": ["prompt", "chosen", "rejected"]}]}
    rl = {"datasets": [{"path": str(world / "rl/train.jsonl"), "columns": ["prompt", "answer"]}]}
    web = str(world / "raw/web.jsonl")
    pipeline_stage = "stages:\n  - {name: a, script: scripts/sft.py, output_dir: " + str(root / "p_out") + "}\n"
    return [
        # Recipe keys and values
        sft("typo_key", "unknown key 'learning_rat'. Did you mean 'learning_rate'?", learning_rat=0.1),
        sft("wrong_type", "key 'learning_rate' expects a number, got 'fast'", learning_rate="fast"),
        raw("yaml_error", "sft.py", "learning_rate: [1, 2\n", "is not valid YAML"),
        raw("list_recipe", "sft.py", "- learning_rate\n- 0.1\n", "must hold a YAML mapping"),
        sft("hub_token", "'hub_token' must not be written in a recipe", hub_token="hf_secret"),
        raw("missing_recipe", "sft.py", None, "Recipe file not found", argv=["--config", str(root / "nope.yaml")]),
        sft("renamed_key", "unknown key 'torch_dtype'. Use 'dtype'", torch_dtype="float32"),
        sft("several_problems", "2 problems in the recipe", torch_dtype="float32", warmup_ratio=0.1),
        sft("unknown_cli_key", "command line: unknown key 'max_step'", argv=["--max_step", "3"]),
        # Values Trainer would take and act on strangely
        sft("learning_rate_nan", "learning_rate: expects a finite number >= 0, got nan", learning_rate=float("nan")),
        sft("learning_rate_negative", "learning_rate: expects a finite number >= 0, got -1.0", learning_rate=-1.0),
        sft("batch_size_zero", "per_device_train_batch_size: must be at least 1", per_device_train_batch_size=0),
        sft("max_steps_zero", "max_steps: 0 trains nothing sensible", max_steps=0),
        sft("max_steps_negative", "max_steps: -5 trains nothing sensible", max_steps=-5),
        # Paths
        sft("output_dir_is_a_file", f"output_dir: {root / 'a_file'} is a file", output_dir=str(root / "a_file")),
        sft("resume_missing", "resume_from_checkpoint: no checkpoint folder at",
            resume_from_checkpoint=str(root / "x")),
        sft("model_missing", f"model_name_or_path: there is no folder {root / 'no_model'}",
            model_name_or_path=str(root / "no_model")),
        sft("hub_id_offline", "someone/not-a-cached-model is a Hub id, and this machine is offline",
            model_name_or_path="someone/not-a-cached-model", env={"HF_HUB_OFFLINE": "1"}),
        sft("chat_template_missing", "chat_template_path: expects a Jinja file",
            chat_template_path=str(root / "none.jinja")),
        dict(sft("disk_full", "error: the disk is full: writing", save_strategy="steps", save_steps=1,
                 eval_on_start=False), disk_full=True),
        # What the model or the machine cannot honour
        sft("longer_than_the_model", "max_length: 4096 tokens, but the model has 256 positions", max_length=4096),
        sft("fsdp_on_cpu", "asks for FSDP, which needs GPUs", env={"ACCELERATE_USE_FSDP": "true"}),
        sft("more_processes_than_cores", "starts 64 processes on this machine", env={"LOCAL_WORLD_SIZE": "64"}),
        sft("qlora_on_cpu", "load_in_4bit: 4-bit (QLoRA) training needs a CUDA GPU", load_in_4bit=True,
            use_peft=True),
        sft("quantized_without_lora", "Quantized weights cannot be trained", load_in_8bit=True),
        # Data, named by file and line
        sft("empty_file", f"{data / 'empty.jsonl'}: the file is empty", data_file=data / "empty.jsonl"),
        sft("malformed_line", f"{data / 'malformed.jsonl'}, line 3: not valid JSON",
            data_file=data / "malformed.jsonl"),
        sft("not_utf8", f"{data / 'not_utf8.jsonl'}, line 2: byte", data_file=data / "not_utf8.jsonl"),
        sft("content_null", "line 2: messages[0] (user) has content None", data_file=data / "content_null.jsonl"),
        sft("content_number", "line 2: messages[1] (assistant) has content 5", data_file=data / "content_number.jsonl"),
        sft("unknown_role", "line 2: messages[0] has the role 'robot'", data_file=data / "unknown_role.jsonl"),
        sft("data_file_missing", "could not be found", data_file=data / "nope.jsonl"),
        sft("mixture_key_typo", "unknown key 'max_exampels'", dataset_mixture={
            "datasets": [{"path": str(good)}], "max_exampels": 4}),
        sft("source_key_typo", "unknown key 'weigth'",
            dataset_mixture={"datasets": [{"path": str(good), "weigth": 2}]}),
        sft("mixture_value_type", "dataset_mixture.max_examples: expects an integer, got 'lots'",
            dataset_mixture={"datasets": [{"path": str(good)}], "max_examples": "lots"}),
        # Preference pairs
        stage("chosen_is_rejected", "dpo.py", "line 1: the chosen reply is the rejected one",
              {"model_name_or_path": str(model), "dataset_mixture": {"datasets": [str(data / "same_pair.jsonl")]}}),
        stage("pair_without_rejected", "dpo.py", "has no column 'rejected'",
              {"model_name_or_path": str(model), "dataset_mixture": {"datasets": [str(data / "no_rejected.jsonl")]}}),
        stage("where_column_typo", "dpo.py", "no column 'knid' named in `where:`; did you mean 'kind'",
              {"model_name_or_path": str(model), "dataset_mixture": {**prefs, "eval_datasets": {"a": {
                  "path": str(world / "preferences/train.jsonl"), "where": {"knid": "math"}}}}}),
        stage("reward_lm_eval", "reward.py", "lm_eval_tasks: a reward model scores text",
              {"model_name_or_path": str(model), "dataset_mixture": prefs, "lm_eval_tasks": ["tiny_arithmetic"]}),
        stage("reward_lora_head", "reward.py", "lora_task_type: SEQ_CLS", {"model_name_or_path": str(model),
              "dataset_mixture": prefs, "use_peft": True, "lora_task_type": "CAUSAL_LM"}),
        # Rewards
        stage("unknown_reward", "grpo.py", "Did you mean 'answer_accuracy'",
              {"model_name_or_path": str(model), "dataset_mixture": rl, "reward_funcs": ["answer_acuracy"]}),
        stage("reward_weights_count", "grpo.py", "2 weights for 1 reward_funcs", {"model_name_or_path": str(model),
              "dataset_mixture": rl, "reward_weights": [1.0, 2.0]}),
        stage("grpo_quantized", "grpo.py", "load_in_4bit / load_in_8bit: grpo",
              {"model_name_or_path": str(model), "dataset_mixture": rl, "load_in_8bit": True}),
        stage("ppo_no_rewards", "ppo.py", "reward_funcs: empty",
              {"model_name_or_path": str(model), "dataset_mixture": rl, "reward_funcs": []}),
        stage("ppo_reward_without_its_column", "ppo.py", "'answer_accuracy' reads the column 'answer'",
              {"model_name_or_path": str(model),
               "dataset_mixture": {"datasets": [str(data / "prompts_no_answer.jsonl")]}}),
        # Distillation and constitutional revisions
        stage("distill_no_teacher_folder", "distill.py", f"teacher_model_name_or_path: there is no folder {root}",
              {"model_name_or_path": str(model), "dataset_mixture": rl,
               "teacher_model_name_or_path": str(root / "no_teacher")}),
        stage("distill_mode_typo", "distill.py", "distill_mode: 'onpolicy' is not one of on_policy, off_policy",
              {"model_name_or_path": str(model), "dataset_mixture": rl, "teacher_model_name_or_path": str(model),
               "distill_mode": "onpolicy"}),
        raw("revisions_without_a_judge", "generate_preferences.py",
            f"output_dir: {root / 'revisions_without_a_judge' / 'out'}\nmodel_name_or_path: {model}\n"
            f"dataset_mixture: {flow(rl)}\njudge: constitution\noutput_format: revisions\n"
            "constitution_path: recipes/templates/constitution.txt\n", "set one of judge_model_name_or_path"),
        # Pretraining and the tokenizer
        stage("pretrain_streaming", "pretrain.py", "dataset_mixture.streaming: pretrain needs a map-style dataset",
              {"model_name_or_path": str(model), "dataset_mixture": {"datasets": [web], "streaming": True}}),
        stage("pretrain_architecture_typo", "pretrain.py", "unknown key 'hiden_size'", {
            "tokenizer_name_or_path": str(ws["tokenizer"]), "dataset_mixture": {"datasets": [web]},
            "model_config": {"model_type": "llama", "hiden_size": 64}}),
        stage("pretrain_nothing_to_start_from", "pretrain.py", "Set model_name_or_path (continue from a checkpoint)",
              {"tokenizer_name_or_path": str(ws["tokenizer"]), "dataset_mixture": {"datasets": [web]}}),
        raw("vocab_too_small", "train_tokenizer.py", f"output_dir: {root / 'tok'}\nvocab_size: 100\n"
            f"dataset_mixture: {flow({'datasets': [web]})}\n", "vocab_size: 100 is smaller than the byte alphabet"),
        raw("pad_is_eos", "train_tokenizer.py", f"output_dir: {root / 'tok'}\npad_token: '<|endoftext|>'\n"
            f"dataset_mixture: {flow({'datasets': [web]})}\n", "pad_token must differ from eos_token"),
        # The pipeline file, checked as a whole before its first stage
        raw("pipeline_missing", "run_pipeline.py", None, "no such file (a pipeline file)",
            argv=["--config", str(root / "nope_pipeline.yaml")]),
        raw("pipeline_yaml_error", "run_pipeline.py", "stages: [\n", "is not valid YAML"),
        raw("pipeline_stage_without_script", "run_pipeline.py",
            "stages:\n  - {name: a, output_dir: " + str(root / "p_out") + "}\n", "stages[0] (a) needs script"),
        raw("pipeline_unknown_reference", "run_pipeline.py",
            pipeline_stage.replace("}", ", args: {model_name_or_path: '{pretrian}'}}"),
            "'{pretrian}' names no earlier"),
        raw("pipeline_unknown_stage", "run_pipeline.py", pipeline_stage, "unknown stage 'b'", argv=["--only", "b"]),
        # Data preparation reads every line or says which it cannot
        raw("prepare_bad_byte", "prepare_data.py", f"output_dir: {root / 'prep1'}\nsources: "
            f"[{flow({'source': 'web', 'path': str(data / 'web_bad_byte.jsonl')})}]\n",
            f"{data / 'web_bad_byte.jsonl'}, line 6: byte"),
        raw("prepare_bad_json", "prepare_data.py", f"output_dir: {root / 'prep2'}\nsources: "
            f"[{flow({'source': 'web', 'path': str(data / 'web_bad_json.jsonl')})}]\n",
            f"{data / 'web_bad_json.jsonl'}, line 6: not valid JSON"),
    ]


@pytest.fixture(scope="module")
def results(workspace):
    root, prepared = workspace["root"], []
    for case in cases(workspace):
        case_dir = root / case["name"]
        case_dir.mkdir(exist_ok=True)
        argv = case["argv"]
        if case["recipe"] is not None:
            recipe = case_dir / "recipe.yaml"
            recipe.write_text(case["recipe"])
            argv = ["--config", str(recipe), *argv]
        prepared.append({**case, "argv": argv, "cwd": str(case_dir)})
    (root / "cases.json").write_text(json.dumps(prepared))
    subprocess.run([sys.executable, str(REPO_ROOT / "tests/helpers/run_scripts.py"), str(root / "cases.json"),
                    str(root / "results.json")], check=True, timeout=600, cwd=REPO_ROOT)
    return {r["name"]: r for r in json.loads((root / "results.json").read_text())}, {c["name"]: c for c in prepared}


def case_names() -> list[str]:
    placeholder = Path("/placeholder")  # the names do not depend on where the files are
    return [case["name"] for case in cases(dict.fromkeys(("root", "data", "model", "world", "tokenizer"),
                                                          placeholder))]


@pytest.mark.parametrize("name", case_names())
def test_bad_input_gets_one_clear_error_and_no_traceback(name, results):
    outcome, case = results[0][name], results[1][name]
    assert outcome["traceback"] is None, outcome["traceback"]
    assert outcome["status"] != 0
    errors = [line for line in outcome["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in outcome["stderr"], outcome["stderr"]
    assert case["fragment"] in outcome["stderr"], outcome["stderr"]
    assert "WEIGHTS LOADED" not in outcome["stderr"]


def test_nothing_is_left_half_written_where_a_bad_run_was_pointed(results, workspace):
    root = workspace["root"]
    for name, case in results[1].items():
        if name == "disk_full":  # it trained a step: its checkpoint was cut off, so none is complete
            assert not list((Path(case["cwd"]) / "out").glob("checkpoint-*/trainer_state.json"))
            continue
        assert not (Path(case["cwd"]) / "out").exists(), f"{name} left its output_dir behind"
    for folder in ("tok", "prep1", "prep2", "p_out"):
        assert not (root / folder).exists(), f"{folder} was left behind"
    assert (root / "a_file").read_text() == "not a folder\n"  # output_dir pointed at a file: untouched


@pytest.mark.parametrize("argv, fragment", [
    (["scripts/sft.py", "--config", "recipes/tiny/sft.yaml", "--learning_rat", "1"], "unknown key 'learning_rat'"),
    (["scripts/run_pipeline.py", "--config", "recipes/tiny/nope.yaml"], "no such file (a pipeline file)"),
])
def test_a_shell_sees_exit_status_2_and_one_line(argv, fragment):
    result = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
