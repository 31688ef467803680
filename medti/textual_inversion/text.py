"""The text side of Textual Inversion: the placeholder's starting vectors and the training prompts."""

from __future__ import annotations

import torch

from medti.errors import ConfigError, ModelError


def template_tokens(tokenizer, template: str) -> int:
    """How many tokens a template takes besides the placeholder."""
    return len(tokenizer.tokenize(template.replace("{}", " ").strip()))


def check_context_room(tokenizer, templates: list[str], num_vectors: int, source: str = "num_vectors") -> None:
    """Every template plus ``num_vectors`` placeholder tokens plus start/end must fit the text context."""
    context = int(tokenizer.model_max_length)
    longest = max(templates, key=lambda t: template_tokens(tokenizer, t))
    used = template_tokens(tokenizer, longest)
    room = context - 2 - used
    if num_vectors > room:
        raise ConfigError(
            f"{source}: {num_vectors} vectors do not fit the {context}-token text context with the template "
            f"'{longest}' ({used} tokens + start/end): at most {max(room, 0)} vectors here"
        )


def initial_vectors(tokenizer, text_encoder, method: str, num_vectors: int, words: str | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Starting vectors ``[num_vectors, dim]`` (float32, CPU).

    ``word``: the embeddings of the word's or phrase's tokens, spread over the vectors in order (a token
    per vector when the counts match; repeated when there are more vectors; averaged in consecutive groups
    when there are more tokens). ``zeros``: zeros. ``random``: normal noise with the vocabulary's spread.
    """
    table = text_encoder.get_input_embeddings().weight.detach().float().cpu()
    dim = table.shape[1]
    if method == "zeros":
        return torch.zeros(num_vectors, dim)
    if method == "random":
        g = torch.Generator().manual_seed(seed + 104729)
        return torch.randn((num_vectors, dim), generator=g) * table.std(dim=0)
    if method != "word":
        raise ConfigError(f"init: unknown method '{method}' (word, zeros or random)")
    ids = tokenizer(words or "", add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"init: '{words}' has no tokens to start from")
    if max(ids) >= table.shape[0]:
        raise ModelError(f"init: '{words}' uses tokens outside the text encoder's vocabulary")
    rows = table[torch.tensor(ids)]
    k = len(ids)
    out = torch.empty(num_vectors, dim)
    for i in range(num_vectors):
        lo = (i * k) // num_vectors
        hi = max(lo + 1, ((i + 1) * k) // num_vectors)
        out[i] = rows[lo:hi].mean(dim=0)
    return out


def prompt_ids(tokenizer, text_encoder, templates: list[str], token: str) -> torch.Tensor:
    """Token ids ``[len(templates), context]`` of each template with the (expanded) placeholder."""
    from medti.models.token_embedding import expand_prompt, placeholder_tokens

    prompts = [expand_prompt(t.format(token), placeholder_tokens(text_encoder)) for t in templates]
    enc = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=False,
                    return_tensors="pt")
    if enc.input_ids.shape[1] > tokenizer.model_max_length:
        raise ConfigError(f"templates: a prompt is longer than the {tokenizer.model_max_length}-token context")
    return enc.input_ids
