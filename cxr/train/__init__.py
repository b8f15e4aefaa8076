"""cxr.train: the training stage (torch, timm): base models with two-phase transfer learning, predictions.

Modules: ``backbones`` (the table of timm backbones), ``config`` (YAML -> frozen dataclasses, which live
in ``settings``; ``typed_mapping`` checks the values), ``transforms``/``dataset`` (images -> tensors),
``loop``/``schedule``/``early_stopping``/``metrics`` (one epoch, the LR schedule, stopping, validation),
``checkpoint`` (safetensors + JSON), ``run`` (``train_member``/``train_all``) with its parts
``member_run`` (a member's state), ``startup`` (building it), ``resume``, ``phases`` and ``epoch``,
``predict`` (``predict_split``), ``predictions`` (file format).
Nothing is imported here, so ``import cxr.train.predictions`` stays light.
"""
