"""asr: speech recognition per utterance, local (faster-whisper) or remote."""
