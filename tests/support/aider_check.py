"""Load the files `runq clients` wrote with aider's own loaders; print what aider made of each model, as JSON.

Run by tests/e2e/test_serve.py with the Python of a venv that has aider-chat (RUNQ_TEST_AIDER_PYTHON):
  aider_check.py DIR MODEL…   (DIR holds .aider.model.settings.yml and .aider.model.metadata.json)
"""

import json
import sys

from aider import models  # aider's register_models refuses a settings key its ModelSettings does not have

d = sys.argv[1]
models.register_models([f"{d}/.aider.model.settings.yml"])
models.register_litellm_models([f"{d}/.aider.model.metadata.json"])
out = {}
for name in sys.argv[2:]:
    m = models.Model(name)
    out[name] = {
        "edit_format": m.edit_format,
        "use_temperature": m.use_temperature,
        "extra_params": m.extra_params,
        "max_input_tokens": m.info.get("max_input_tokens"),
        "missing_keys": m.missing_keys,
    }
print(json.dumps(out))
