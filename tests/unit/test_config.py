import pytest

from parley.config import ConfigError, load_settings


def test_defaults_are_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    settings = load_settings()
    assert settings.llm.provider == "xllamacpp"
    assert settings.asr.provider == "faster_whisper"
    assert settings.tts.provider == "piper"


def test_bad_keys_are_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "parley.toml"
    path.write_text('[vad]\nthreshold = 3\nbogus = 1\n[llm]\nprovider = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = str(err.value)
    assert "vad.threshold" in text
    assert "vad.bogus" in text
    assert "llm.provider" in text


def test_environment_overrides_the_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "parley.toml"
    path.write_text("[vad]\nsilence_ms = 700\n")
    monkeypatch.setenv("PARLEY_VAD__SILENCE_MS", "900")
    assert load_settings(path).vad.silence_ms == 900
    monkeypatch.setenv("PARLEY_VAD__SILENCE_MS", "80")
    with pytest.raises(ConfigError, match="vad.silence_ms"):
        load_settings(path)


def test_missing_file_and_bad_toml_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[vad\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(bad)
