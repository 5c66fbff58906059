"""llm: conversation state and streaming answers, cut into speakable sentences."""
