"""The networks: talker, code predictor, speech-tokenizer codec and the voice-clone encoders.

Modules hold weights only; every piece of generation state is passed in and returned."""
