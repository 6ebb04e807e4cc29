"""The default texts of the emails (settings `EMAIL_BODY`, `DOI_BODY`, `FAILURE_*`...), which operators may
replace; the placeholders they may use are in docs/configuration.md."""

DEFAULT_EMAIL_BODY = """Hello,

The data you requested from {ckan_host} (resource {resource_id}) is ready. Download it here:
{download_url}

This was job {job_id}; its status page is {status_url}

{doi_body}
Best wishes,
The Data Portal Bot
"""

DEFAULT_EMAIL_BODY_HTML = """<html lang="en">
<body>
<p>Hello,</p>
<p>The data you requested from {ckan_host} (resource {resource_id}) is ready.
<a href="{download_url}">Download it here</a>.</p>
<p>This was job {job_id}; <a href="{status_url}">its status page</a>.</p>
{doi_body_html}
<p>Best wishes,<br>The Data Portal Bot</p>
</body>
</html>
"""

DEFAULT_DOI_BODY = """A DOI has been created for this data: https://doi.org/{doi} (it may take a few hours to
become active). Please cite this DOI when you use the data.
"""

DEFAULT_DOI_BODY_HTML = """<p>A DOI has been created for this data:
<a href="https://doi.org/{doi}">https://doi.org/{doi}</a> (it may take a few hours to become active).
Please cite this DOI when you use the data.</p>
"""


DEFAULT_FAILURE_SUBJECT = "Your download from {ckan_host} could not be prepared"

DEFAULT_FAILURE_BODY = """Hello,

We could not prepare the data you requested from {ckan_host} (resource {resource_id}).

{what_happened}
{what_next}

Details: {status_url}
Download number: {job_id}

Best wishes,
The Data Portal Bot
"""
