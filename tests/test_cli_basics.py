import subprocess
import sys

from click.testing import CliRunner

from mlx_qwen_tts import __version__
from mlx_qwen_tts.cli import main


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_import_is_light():
    code = "import sys, mlx_qwen_tts; print('sounddevice' in sys.modules, 'mlx.core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
