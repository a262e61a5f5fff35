"""When a trial writes a checkpoint. Every epoch is what resuming needs, but a checkpoint of a
fully trained ResNet-18 (weights, optimizer state, best weights: 134 MB) takes 0.1-0.5 s to
save and copy, more than a third of an epoch on small images. So a trial checkpoints where
the driver may log its model from the checkpoint (an epoch where the scheduler may stop it,
its last epoch: only search trials of a sweep without confirmation runs) and otherwise only
as often as keeps checkpointing under a share of its time, as Ray Tune paces its own
experiment state: a resumed trial redoes at most a few epochs, and a small model still
checkpoints every epoch."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainables import contract

# At most this share of a trial's time goes to checkpoints it could skip.
MAX_SHARE = 0.05


@dataclass(frozen=True)
class CheckpointPolicy:
    """The sweep's part: the epochs at which the scheduler decides whether a trial goes on
    (its model must be saved there: a trial stopped at one keeps its best epoch's model)."""

    decision_epochs: frozenset[int] = frozenset()
    max_share: float = MAX_SHARE
    # The roles of the trials whose model the driver may log from their last checkpoint,
    # which must then hold it wherever the trial ends. The others log their own model, or
    # none is wanted: their checkpoints are for a restart alone, and one written as the
    # trial ends (a large model's save costs a noticeable share of a short trial) would be read
    # by none.
    model_roles: frozenset[str] = frozenset(contract.ROLES)


@dataclass
class CheckpointPacer:
    """One trial's pacing: ``due`` before each report, ``reported`` after it."""

    policy: CheckpointPolicy
    max_epochs: int
    role: str = contract.SEARCH_ROLE
    _cost: float | None = field(default=None, init=False)  # the last checkpoint's seconds
    _since: float = field(default=0.0, init=False)  # seconds of work since it
    _plain: float | None = field(default=None, init=False)  # the quickest report without one

    def due(self, epoch: int, seconds: float) -> bool:
        """Whether epoch ``epoch``, which took ``seconds``, ends with a checkpoint. The first
        always does: it measures what one costs."""
        self._since += seconds
        if self._cost is None:
            return True
        if self.role in self.policy.model_roles and self._may_end_at(epoch):
            return True
        return self._cost <= self.policy.max_share * self._since

    def _may_end_at(self, epoch: int) -> bool:
        return epoch >= self.max_epochs or epoch in self.policy.decision_epochs

    def reported(self, seconds: float, *, checkpointed: bool) -> None:
        """A report took ``seconds``. Every report waits for the driver to take it; what a
        checkpoint costs is only what its report took beyond the quickest plain one (a plain
        report that waited long for a busy driver would make checkpoints look free, and then
        no plain report would follow to correct it)."""
        if not checkpointed:
            self._plain = seconds if self._plain is None else min(self._plain, seconds)
            return
        self._cost, self._since = max(0.0, seconds - (self._plain or 0.0)), 0.0


PACED = CheckpointPolicy()  # no decision epochs: first, paced, last
