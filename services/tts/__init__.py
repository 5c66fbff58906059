"""tts: speech synthesis per sentence, streamed as it is produced."""
