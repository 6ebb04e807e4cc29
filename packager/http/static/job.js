// The job's page, live: every `job` event of /jobs/{id}/events carries `display`, the texts the server
// rendered the page with, for the state now; this script only puts them in place. The stream follows the
// job until its email's outcome is known, then sends `end`.
"use strict";
(() => {
  const main = document.getElementById("job");
  const jobId = main.dataset.jobId;
  const byId = (id) => document.getElementById(id);
  const show = (id, text) => {
    const node = byId(id);
    node.textContent = text || "";
    const row = node.closest("[data-row]") || node;
    row.hidden = !text;
  };
  let shownState = main.dataset.state;

  const apply = (d) => {
    if (d.state !== shownState) {
      // A change of state is announced once (the live region holds the headline only).
      byId("headline").textContent = d.headline;
      document.title = "Your data download: " + d.headline + (main.dataset.titleSuffix || "");
      main.className = "state-" + d.state;
      main.dataset.state = shownState = d.state;
    }
    const bar = byId("bar");
    byId("bar-row").hidden = !d.bar;
    if (d.percent === null || d.percent === undefined) { bar.removeAttribute("value"); }
    else if (bar.value <= d.percent) { bar.value = d.percent; }  // the bar never goes back
    show("progress", d.progress);
    show("message", d.message);
    show("next", d.next);
    show("size", d.size);
    show("finished", d.finished);
    show("expires", d.expires);
    show("email", d.email);
    const link = byId("link");
    if (d.download) {
      link.href = d.download.url;
      link.textContent = d.download.text;
      link.hidden = false;
    } else {
      link.hidden = true;
    }
  };

  const source = new EventSource("./" + encodeURIComponent(jobId) + "/events");
  source.addEventListener("job", (message) => apply(JSON.parse(message.data).display));
  source.addEventListener("end", () => source.close());
})();
