"""`GET /api/rules/{name}/preview?since=7d`: what a rule would have done over the stored readings, as JSON;
`POST /api/rules/reload`: reload the rule files that changed now (`roost rules reload`), without waiting for
the watcher.

The same timeline as `roost rules preview` (roost.rules.preview), for the dashboard. The preview runs in a worker
thread on its own event loop and test clock, so the hub's rules and requests do not wait for it; it reads the
store through a read view taken on the hub's loop (one view reads at a time: a PromQL query waits while a
preview reads). Stand-ins of the hub's things, with their current values, take the rule's writes: nothing is
actuated.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from aiohttp import web

from roost.api.responses import json_response
from roost.durations import parse_duration_ms
from roost.things import Thing

if TYPE_CHECKING:
    from roost.hub import Hub

MAX_SINCE_MS = 90 * 86_400_000


def add_rule_routes(app: web.Application, hub: Hub) -> None:
    previews = ThreadPoolExecutor(1, thread_name_prefix="roost-rule-preview")

    async def close(_app: web.Application) -> None:
        previews.shutdown(wait=False, cancel_futures=True)

    async def rule_preview(request: web.Request) -> web.Response:
        from roost.rules.preview import preview

        engine = hub.rules
        name = request.match_info["name"]
        if engine is None or name not in engine.runtimes:
            known = sorted(engine.runtimes) if engine is not None else []
            return json_response({"error": f"no rule named {name!r}" + (f" (rules: {', '.join(known)})" if known else "")}, 404)
        try:
            since_ms = parse_duration_ms(request.query.get("since", "7d"))
        except ValueError as err:
            return json_response({"error": f"since: {err}"}, 400)
        if not 0 < since_ms <= MAX_SINCE_MS:
            return json_response({"error": "since: between 1 ms and 90d"}, 400)
        rt = engine.runtimes[name]
        things = [Thing(id=t.id, title=t.title, properties=dict(t.properties), values=dict(t.values))
                  for t in hub.things if not t.id.startswith("rule-")]
        end = datetime.now(timezone.utc)
        view = hub.store.read_view()

        log = engine.thing_log

        def run(view) -> dict:
            if log is not None:
                log.flush()  # the changes of the last seconds too
            return asyncio.run(preview(rt.source, things=things, history=view.read, start=end - timedelta(milliseconds=since_ms),
                                       end=end, place=engine.place, properties=dict(rt.property_values),
                                       notify=engine.notify_targets, changes=log.read if log is not None else None)).as_json()

        body = await asyncio.get_running_loop().run_in_executor(previews, view.run, run)
        return json_response(body)

    async def rules_reload(request: web.Request) -> web.Response:
        engine = hub.rules
        if engine is None:
            return json_response({"error": "this hub runs no rules ([rules] directory in its config)"}, 404)
        problems = await engine.reload_if_changed()
        return json_response({"reloaded": engine.last_reloaded if problems is not None else [], "problems": problems or []})

    app.router.add_get("/api/rules/{name}/preview", rule_preview)
    app.router.add_post("/api/rules/reload", rules_reload)
    app.on_cleanup.append(close)
