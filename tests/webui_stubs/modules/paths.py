import os
import tempfile

# The tests point this at a temporary folder before the extension is loaded.
models_path = os.path.join(tempfile.gettempdir(), "webui-stub-models")
script_path = os.path.dirname(os.path.dirname(__file__))
