"""Helpers the tiny world's lm-eval tasks name with `!function utils.<name>`."""


def _passkey_of_length(words: int):
    def select(dataset):
        return dataset.filter(lambda doc: doc["context_words"] == words)

    return select


passkey_40 = _passkey_of_length(40)
passkey_80 = _passkey_of_length(80)
passkey_160 = _passkey_of_length(160)
passkey_400 = _passkey_of_length(400)
