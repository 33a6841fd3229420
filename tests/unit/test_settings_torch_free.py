"""Method and stage settings are checked without torch, from tables that match the classes."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_tables_describe_exactly_the_registered_classes():
    from leantune.methods.base import imports_peft_wrapper
    from leantune.methods.registry import list_methods
    from leantune.recipe.method_settings import METHOD_INFO
    from leantune.recipe.stage_settings import STAGE_SETTINGS
    from leantune.stages.registry import list_stages

    methods = {cls.name: cls for cls in list_methods()}
    assert set(methods) == set(METHOD_INFO)
    for name, cls in methods.items():
        info = METHOD_INFO[name]
        assert cls.Config is info.settings, name
        # the table's PEFT flag (composition checks) agrees with what the class's modules import
        assert imports_peft_wrapper(cls) == info.peft, name
    stages = {cls.name: cls for cls in list_stages()}
    assert set(stages) == set(STAGE_SETTINGS)
    for name, cls in stages.items():
        assert cls.Config is STAGE_SETTINGS[name], name


CHECKS = r'''
import sys
from leantune.errors import RecipeError
from leantune.recipe.method_settings import validate_method_settings
from leantune.recipe.stage_settings import validate_stage_settings

def refused(check, *args):
    try:
        check(*args)
    except RecipeError as err:
        return str(err)
    raise AssertionError(f"accepted: {args}")

methods = validate_method_settings([{"name": "qlora", "r": 4}, {"name": "adapter", "kind": "parallel"},
                                    {"name": "llrd"}], "r.yaml")
assert [m["name"] for m in methods] == ["qlora", "adapter", "llrd"] and methods[0]["quant_type"] == "nf4"
assert validate_method_settings([{"name": "prompt_tuning", "init": "text", "init_text": "Classify."}], "r")
stage = validate_stage_settings({"name": "continual", "tasks": [{"data": "a.jsonl", "name": "a"}]}, "r.yaml")
assert stage["tasks"][0]["eval_split"] == 0.2 and stage["strategy"] == "naive"
assert validate_stage_settings({"name": "pet", "templates": "{text} It was {mask}."}, "r")["templates"]
assert validate_stage_settings({"name": "grpo", "reward": "max_words"}, "r")["loss_type"] == "dapo"

assert "Did you mean 'lora'?" in refused(validate_method_settings, [{"name": "loar"}], "r.yaml")
assert "Available: adalora, adamix" in refused(validate_method_settings, [{"name": "x"}], "r.yaml")
assert "Did you mean 'r'?" in refused(validate_method_settings, [{"name": "lora", "rank": 4}], "r.yaml")
assert "must not exceed init_r" in refused(validate_method_settings, [{"name": "adalora", "target_r": 99}], "r")
assert "PEFT-based" in refused(validate_method_settings, [{"name": "lora"}, {"name": "ia3"}], "r.yaml")
assert "listed twice" in refused(validate_method_settings, [{"name": "bitfit"}, {"name": "bitfit"}], "r.yaml")
assert "has no 'name'" in refused(validate_method_settings, [{"r": 4}], "r.yaml")
assert "Did you mean 'dpo'?" in refused(validate_stage_settings, {"name": "dpoo"}, "r.yaml")
assert "r.yaml: stage dpo: beta" in refused(validate_stage_settings, {"name": "dpo", "beta": -1}, "r.yaml")
assert "use stage icl" in refused(validate_stage_settings, {"name": "pet", "templates": "{label} {mask}"}, "r")
assert "task names" in refused(validate_stage_settings, {"name": "multitask", "tasks": [{"data": "a", "name": "1"}]}, "r")
assert "reward" in refused(validate_stage_settings, {"name": "ppo"}, "r.yaml")
print("torch" in sys.modules)
'''


def test_settings_are_checked_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECKS)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
