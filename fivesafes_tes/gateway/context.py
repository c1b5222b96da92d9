"""What every route of the gateway shares (settings, database, token validator, caches, stores),
and the one typed way to reach it from a request or an app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from fivesafes_tes.auth import DevIssuer, TokenValidator, UserCache
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.signals import WorkSignal
from fivesafes_tes.gateway.ttlcache import TtlCache
from fivesafes_tes.settings import GatewaySettings
from fivesafes_tes.submission.federation import Target
from fivesafes_tes.submission.tasks import SubmissionPolicy
from fivesafes_tes.tes import ServiceInfo

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from fivesafes_tes.egress.store import ObjectStore
    from fivesafes_tes.gateway.ops import Metrics
    from fivesafes_tes.submission.deliveries import Deliverer, DeliveryLoop


@dataclass
class GatewayContext:
    settings: GatewaySettings
    db: Database
    validator: TokenValidator
    service_info: ServiceInfo
    policy: SubmissionPolicy
    metrics: Metrics
    dev_issuer: DevIssuer | None = None
    results_store: ObjectStore | None = None  # where released outputs are kept, when configured
    signal: WorkSignal = field(default_factory=WorkSignal)
    # Where each user's tasks go (project, TREs): seen by other replicas within `target_cache_ttl_s`
    # of a change.
    targets: TtlCache[Target] = field(init=False)
    user_cache: UserCache = field(default_factory=UserCache)
    # Delivers released outputs where their TES urls say, if this gateway has a results store and
    # somewhere to deliver to.
    deliverer: Deliverer | None = None
    deliveries: DeliveryLoop | None = None  # while the app runs, with a deliverer

    def __post_init__(self) -> None:
        self.targets = TtlCache[Target](self.settings.target_cache_ttl_s)

    def wake_deliveries(self) -> None:
        """A delivery is owed now (else the loop finds it within seconds, or at the next start)."""
        if self.deliveries is not None:
            self.deliveries.wake()


def attach(app: Starlette, ctx: GatewayContext) -> None:
    """Make `ctx` the state every route of `app` reaches through `context`."""
    app.state.ctx = ctx


def app_context(app: Starlette) -> GatewayContext:
    """The state `create_app` attached to `app`."""
    ctx = getattr(app.state, "ctx", None)
    if not isinstance(ctx, GatewayContext):
        raise TypeError("this app has no gateway context: build it with gateway.app.create_app")
    return ctx


def context(request: Request) -> GatewayContext:
    """The state of the gateway serving `request`."""
    return app_context(request.app)
