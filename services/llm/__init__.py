"""llm: a session's conversation and its streamed answers, cut into speakable
sentences (the first one eagerly, so speech starts while the model writes).

providers/: the chat models (local llama.cpp, by default the bundled Gemma 3
270M; any OpenAI-compatible server). sentences.py: the sentence splitter.
conversation.py: the bounded history, and what the listener heard of an
interrupted answer. service.py: the stage on the bus."""
