"""agreement v1: the exchange's own dataset of data-sharing agreements (a system dataset).

Each transition of an agreement (request, approval, countersignature, rejection, revocation)
is one version of one record, published by the broker under its own key: the agreement is
then an entry of the transparency log like any record, with a seq, a leaf, a receipt, and a
place in ``exchange audit``. The record itself carries the parties' signatures
(``exchange.core.agreements``). Not listed with the national datasets, and nobody subscribes
to it: agreements are read at ``/v1/agreements``.
"""

from __future__ import annotations

from exchange.core.agreements import AgreementRecord
from exchange.core.datasets.base import DatasetSpec

__all__ = ["SPEC"]

SPEC = DatasetSpec(
    name="agreement",
    version=1,
    record_type=AgreementRecord,
    key=lambda a: a.id,
    groups={"agreement": ("id", "request", "requested", "decisions", "state", "countersign")},
    required=("id", "request", "requested"),
    recommended=(),
    update_interval_s=10 * 365 * 86_400,
    description="A data-sharing agreement and every signature on it so far (the exchange's "
                "own; one version per transition).",
    system=True,
)
