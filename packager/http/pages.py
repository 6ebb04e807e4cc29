"""The pages a person's browser gets: the landing page at `/`, a job's page, and errors, all in one template.

Programs keep getting JSON: a page is served only when the request's `Accept` asks for `text/html` and not
for JSON (`wants_html`), which is what browsers send and what neither the CKAN extension nor `curl` does.
The operator brands the pages through settings (PORTAL_NAME, PORTAL_URL, PORTAL_LOGO_URL,
PAGE_ACCENT_COLOUR, PAGE_BACKGROUND_COLOUR) and may replace the template (PAGE_TEMPLATE_FILE, a
`string.Template` with `$title`, `$main` and the other placeholders of `templates/page.html`). Every value
is HTML-escaped here; the template's placeholders receive finished HTML.
"""

from __future__ import annotations

import functools
import html
import re
import string
from pathlib import Path
from typing import Any

from aiohttp import web

from packager.core.errors import ConfigurationError
from packager.core.settings import Settings
from packager.http.job_texts import format_text, parse_time, query_text, time_text
from packager.http.openapi import spec
from projections.jobs import JobState

HERE = Path(__file__).parent
STATIC_DIRECTORY = HERE / "static"
DEFAULT_TEMPLATE = HERE / "templates" / "page.html"
PLACEHOLDERS = frozenset({"title", "static", "accent", "background", "portal", "main", "footer", "scripts"})
REQUIRED = frozenset({"title", "main"})


def _e(value: Any) -> str:
    """HTML-escaped text (quotes too: values go into attributes)."""
    return html.escape(str(value), quote=True)


def wants_html(request: web.BaseRequest) -> bool:
    """True for a browser: `Accept` names text/html and not application/json."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


@functools.lru_cache(maxsize=4)
def _template(path: str) -> string.Template:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"PAGE_TEMPLATE_FILE {path} cannot be read: {exc}") from None
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigurationError(f"PAGE_TEMPLATE_FILE {path} has a malformed $placeholder")
    used = set(template.get_identifiers())
    if unknown := used - PLACEHOLDERS:
        raise ConfigurationError(
            f"PAGE_TEMPLATE_FILE {path} uses unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(PLACEHOLDERS))}"
        )
    if missing := REQUIRED - used:
        raise ConfigurationError(
            f"PAGE_TEMPLATE_FILE {path} lacks {', '.join('$' + m for m in sorted(missing))}"
        )
    return template


def load_template(settings: Settings) -> string.Template:
    """The pages' template (the operator's file or the shipped one), checked; a bad one stops the service."""
    return _template(settings.page_template_file or str(DEFAULT_TEMPLATE))


def _static_prefix(request: web.BaseRequest) -> str:
    """The static folder relative to the page's path, so pages work behind a proxy's path prefix too."""
    depth = max(0, request.path.count("/") - 1)
    return "../" * depth + "static/"


def _portal(settings: Settings) -> str:
    name = settings.portal_name or "Data downloads"
    logo = f'<img src="{_e(settings.portal_logo_url)}" alt="">' if settings.portal_logo_url else ""
    inner = f'{logo}<span class="portal">{_e(name)}</span>'
    if settings.portal_url:
        return f'<a href="{_e(settings.portal_url)}">{inner}</a>'
    return inner


def page(
    request: web.BaseRequest,
    settings: Settings,
    *,
    title: str,
    main: str,
    status: int = 200,
    scripts: tuple[str, ...] = (),
) -> web.Response:
    """A page in the operator's template."""
    static = _static_prefix(request)
    back = (
        f'<a href="{_e(settings.portal_url)}">Back to {_e(settings.portal_name or "the portal")}</a> · '
        if settings.portal_url
        else ""
    )
    values = {
        "title": _e(f"{title} · {settings.portal_name}" if settings.portal_name else title),
        "static": static,
        "accent": settings.page_accent_colour,
        "background": settings.page_background_colour,
        "portal": _portal(settings),
        "main": main,
        "footer": f"{back}Prepared by ckanpackager, the portal's download service.",
        "scripts": "".join(f'<script src="{static}{_e(name)}" defer></script>' for name in scripts),
    }
    text = load_template(settings).safe_substitute(values)
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def landing(request: web.BaseRequest, settings: Settings) -> web.Response:
    """`/` for a browser: what this service is, and where its description is."""
    portal = _e(settings.portal_name or "the data portal")
    main = f"""
<h1>Data download service</h1>
<p>This service prepares downloads of data from {portal}: it fetches the rows or file you asked for,
packs them in a ZIP archive and emails you a link. You ask for a download on the portal's pages; the
email and the portal give you a link to a page here that follows your download.</p>
<h2>For developers</h2>
<ul>
<li><a href="docs">The HTTP API's endpoints</a></li>
<li><a href="openapi.json">The HTTP API's OpenAPI description</a> (JSON)</li>
</ul>
"""
    return page(request, settings, title="Data download service", main=main)


def _markdown_code(text: str) -> str:
    """Escaped text with its `code spans` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def api_docs(request: web.BaseRequest, settings: Settings) -> web.Response:
    """`/docs`: every endpoint with its summary, from the OpenAPI description (one source for both)."""
    document = spec()
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "summary" in operation:
                rows.append(
                    f"<tr><td><code>{_e(method.upper())}&nbsp;{_e(path)}</code></td>"
                    f"<td>{_markdown_code(operation['summary'])}</td></tr>"
                )
    main = f"""
<h1>The HTTP API</h1>
<p>{_markdown_code(document["info"]["description"])} The full description, with every parameter and answer, is
<a href="openapi.json">the OpenAPI document</a>.</p>
<div class="scroll" tabindex="0" role="region" aria-label="Endpoints">
<table>
<caption>Endpoints</caption>
<thead><tr><th scope="col">Endpoint</th><th scope="col">What it does</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
</div>
"""
    return page(request, settings, title="The HTTP API", main=main)


def error_page(request: web.BaseRequest, settings: Settings, status: int, message: str) -> web.Response:
    """An error for a browser: what happened and where to go."""
    titles = {404: "Not found", 403: "Not allowed", 410: "Gone", 503: "Not available right now"}
    title = titles.get(status, "Something went wrong" if status >= 500 else "Cannot do that")
    if status >= 500:  # the reason (a database's error, an exception) is for the operator's log, not here
        message = "The service cannot answer this right now. Please try again in a minute."
    main = f"""
<h1>{_e(title)}</h1>
<p class="problem">{_e(message)}</p>
<p><a href="{_static_prefix(request).removesuffix("static/") or "./"}">What this service is</a></p>
"""
    return page(request, settings, title=title, main=main, status=status)


def unknown_job_page(
    request: web.BaseRequest, settings: Settings, job_id: str, *, well_formed: bool
) -> web.Response:
    """404 for a job id nobody was given (or a link cut short)."""
    scripts: tuple[str, ...] = ()
    if well_formed:
        detail = (
            f"No download with the number <code>{_e(job_id)}</code> is known here. A request just made "
            "appears within a few seconds (this page looks again by itself for a short while). Otherwise, "
            "please check that the link was copied in full, or ask for the data again from the portal."
        )
        scripts = ("wait.js",)
    else:
        detail = (
            "This is not the address of a download: the link may have been cut short. Please open the link "
            "from your email again, or ask for the data again from the portal."
        )
    main = f"""
<h1>No such download</h1>
<p class="problem" id="unknown" data-job-id="{_e(job_id)}">{detail}</p>
<p><a href="{_static_prefix(request).removesuffix("static/")}">What this service is</a></p>
"""
    return page(request, settings, title="No such download", main=main, status=404, scripts=scripts)


def job_page(
    request: web.BaseRequest,
    settings: Settings,
    job: JobState,
    details: dict[str, Any] | None,
    display: dict[str, Any],
) -> web.Response:
    """A job's page: what was asked, when, where it is, what next; kept live by `static/job.js`."""
    d = display
    requested = time_text(parse_time(job.requested_at))
    bar_value = f' value="{d["percent"]}"' if d["percent"] is not None else ""
    download = d["download"]
    link = (
        f'<a id="link" class="download" href="{_e(download["url"])}">{_e(download["text"])}</a>'
        if download
        else '<a id="link" class="download" href="#" hidden></a>'
    )

    def row(label: str, ident: str, text: str) -> str:
        hidden = "" if text else " hidden"
        return f'<div data-row{hidden}><dt>{label}</dt><dd id="{ident}">{_e(text)}</dd></div>'

    main = f"""
<div id="job" class="state-{_e(d["state"])}" data-job-id="{_e(job.job_id)}" data-state="{_e(d["state"])}"
 data-title-suffix="{_e(f" · {settings.portal_name}" if settings.portal_name else "")}">
<h1>Your data download</h1>
<p id="headline" class="status" role="status" aria-live="polite">{_e(d["headline"])}</p>
<div id="bar-row"{"" if d["bar"] else " hidden"}>
<progress id="bar" max="100"{bar_value} aria-label="Progress of the download being prepared"></progress>
</div>
<p id="progress"{"" if d["progress"] else " hidden"}>{_e(d["progress"])}</p>
<p id="message" class="problem"{"" if d["message"] else " hidden"}>{_e(d["message"])}</p>
{link}
<p id="next"{"" if d["next"] else " hidden"}>{_e(d["next"])}</p>
<p id="email" class="note">{_e(d["email"])}</p>
<h2>What you asked for</h2>
<dl>
<div data-row><dt>Resource</dt><dd>{_e(job.resource_id or "unknown")}</dd></div>
<div data-row><dt>Data</dt><dd>{_e(query_text(details, job.kind))}</dd></div>
<div data-row><dt>Format</dt><dd>{_e(format_text(details, job.kind))}</dd></div>
{row("Requested", "requested", requested)}
{row("Finished", "finished", d["finished"])}
{row("Size", "size", d["size"])}
{row("Link expiry", "expires", d["expires"])}
<div data-row><dt>Download number</dt><dd><code>{_e(job.job_id)}</code></dd></div>
</dl>
</div>
"""
    # `dl` may hold only dt/dd or div groups of them (HTML's content model), as above.
    return page(
        request, settings, title=f"Your data download: {d['headline']}", main=main, scripts=("job.js",)
    )


def statistics_page(request: web.BaseRequest, settings: Settings) -> web.Response:
    """`/statistics/page`: a form for the secret, then charts drawn by `static/stats.js`.

    The page itself holds no numbers and needs no secret: the script sends the secret typed in the form in
    the body of POSTs to `/statistics` and `/statistics/daily` (never in a URL, which logs and browser
    histories keep) and draws what they answer as inline SVG, with no library and nothing fetched from
    elsewhere. Without the script, the form posts to `/statistics/daily` and the browser shows its JSON.
    """
    days = "".join(
        f'<option value="{n}"{" selected" if n == 30 else ""}>{label}</option>'
        for n, label in ((7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "365 days"))
    )
    main = f"""
<h1>Download statistics</h1>
<p>Requests, failures and the people who asked, per day (UTC), for every resource or for one.</p>
<form id="ask" class="ask" method="post" action="daily">
<label for="secret">Service secret</label>
<input id="secret" name="secret" type="password" autocomplete="current-password" required>
<label for="resource">Resource</label>
<select id="resource" name="resource_id"><option value="">All resources</option></select>
<label for="days">Period</label>
<select id="days" name="days">{days}</select>
<button type="submit">Show</button>
</form>
<p id="problem" class="problem" role="alert" hidden></p>
<div id="charts" aria-live="polite" hidden>
<p id="summary" class="note"></p>
<figure><figcaption>Requests per day</figcaption><div id="chart-requests" class="chart"></div></figure>
<figure><figcaption>Failures per day</figcaption><div id="chart-errors" class="chart"></div></figure>
<figure><figcaption>Unique requesters per day</figcaption><div id="chart-requesters" class="chart"></div>
</figure>
<details><summary>The numbers</summary>
<div class="scroll" tabindex="0" role="region" aria-label="Numbers per day">
<table><caption>Per day</caption>
<thead><tr><th scope="col">Day</th><th scope="col">Requests</th><th scope="col">Failures</th>
<th scope="col">Unique requesters</th></tr></thead><tbody id="numbers"></tbody></table>
</div></details>
</div>
<noscript><p class="problem">The charts need JavaScript; without it, Show answers the numbers as JSON.
</p></noscript>
"""
    answer = page(request, settings, title="Download statistics", main=main, scripts=("stats.js",))
    answer.headers["Referrer-Policy"] = "no-referrer"
    return answer
