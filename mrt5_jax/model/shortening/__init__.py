"""How the encoder shortens at layer ``delete_gate_layer``: the protocol
(``base``), the delete gates (``delete_gate``), BP (``boundary``), CP (``conv``),
and the one mapping from ``deletion_type`` to them (``registry``)."""
