"""Every workflow the worker runs (one list, imported by worker.py and the tests)."""

from workflows.canary import CanaryWorkflow
from workflows.change_events import ChangeEventsWorkflow
from workflows.change_request import ChangeRequestWorkflow
from workflows.degradation import DegradationWorkflow
from workflows.emergency import EmergencyWorkflow
from workflows.incident import IncidentWorkflow
from workflows.monitor import MonitorWorkflow
from workflows.pager import PagerWorkflow
from workflows.paging_test import PagingTestWorkflow
from workflows.rollback import RollbackWorkflow

WORKFLOWS: list[type] = [RollbackWorkflow, DegradationWorkflow, IncidentWorkflow, MonitorWorkflow, CanaryWorkflow,
                        ChangeRequestWorkflow, PagerWorkflow, PagingTestWorkflow, ChangeEventsWorkflow, EmergencyWorkflow]
