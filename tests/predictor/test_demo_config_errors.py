"""`python -m glip_d2.demo` with a config file that is not valid YAML: a setup error (exit
status 2, one line on stderr), like a missing config file or an unknown key."""

import pytest

from glip_d2 import demo


@pytest.mark.parametrize(
    "text",
    ["MODEL:\n  DEVICE: [cpu\n", "MODEL: {DEVICE: cpu\n", "MODEL:\n\tDEVICE: cpu\n",
     "", "# nothing\n", "- MODEL\n- INPUT\n", "just text\n"],
)
def test_a_config_file_that_is_not_yaml_is_a_setup_error(tmp_path, capsys, text):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    image = tmp_path / "x.png"
    assert demo.main(["--config-file", str(config), "--input", str(image)]) == 2
    err = capsys.readouterr().err
    assert f"error: invalid config file {str(config)!r}" in err
    assert "Traceback" not in err
