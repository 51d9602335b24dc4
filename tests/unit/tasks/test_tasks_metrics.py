import pytest
import seqio

import mrt5_jax.tasks  # noqa: F401  (registers the tasks)
from mrt5_jax.tasks import metrics


def test_span_corruption_tasks_carry_predict_and_score_metrics():
  for name in ("mrt5.span_corruption.sample", "mrt5.span_corruption.text",
               "mrt5.span_corruption.mc4.en"):
    task = seqio.get_mixture_or_task(name)
    assert metrics.sequence_accuracy in task.predict_metric_fns
    assert metrics.log_likelihood in task.score_metric_fns


def test_log_likelihood_is_the_mean_score():
  assert metrics.log_likelihood(["a", "b"], [-2.0, -4.0]) == {"log_likelihood": -3.0}
  with pytest.raises(ValueError, match="scores"):
    metrics.log_likelihood(["a"], [])
