// The statistics page: the secret typed in the form goes in the body of POSTs to /statistics (the
// resources and their totals) and /statistics/daily (the series), never in a URL; the answers are drawn
// as inline SVG bar charts. No library and nothing from elsewhere: the page works offline.
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);
  const form = byId("ask");
  let resourcesLoaded = false;

  const post = async (url, fields) => {
    const answer = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams(fields),
      credentials: "omit",
      cache: "no-store",
    });
    const body = await answer.json().catch(() => ({}));
    if (answer.status === 401) throw new Error("The secret is not right. Please type it again.");
    if (!answer.ok) throw new Error(body.message || "The statistics cannot be read right now.");
    return body;
  };

  const node = (name, attributes, text) => {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  };

  const number = (n) => n.toLocaleString("en-GB");
  const counted = (n, one, many) => `${number(n)} ${n === 1 ? one : many}`;

  // One bar per day, the day's number in each bar's tooltip; the axis shows 0, the largest value and
  // the first and last days. What the chart shows is also its accessible name: its total over the
  // period, unless the days' numbers do not add up (a person asking on two days is one person).
  const chart = (holder, days, key, label, colour, adds = true) => {
    const width = 640, height = 220, left = 52, bottom = 26, top = 10;
    const values = days.map((d) => d[key]);
    const most = Math.max(1, ...values);
    const total = values.reduce((a, b) => a + b, 0);
    const peak = days[values.indexOf(Math.max(...values))];
    const svg = node("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img", class: "bars", "data-total": total,
      "aria-label": `${label}` + (adds ? `: ${number(total)} in ${days.length} days` : ` over ${days.length} days`) +
        (total ? `, most ${number(peak[key])} on ${peak.date}` : ""),
    });
    const plot = height - bottom - top;
    const step = (width - left) / days.length;
    svg.append(node("line", { x1: left, y1: top + plot, x2: width, y2: top + plot, class: "axis" }));
    svg.append(node("text", { x: left - 6, y: top + plot, "text-anchor": "end", class: "tick" }, "0"));
    svg.append(node("text", { x: left - 6, y: top + 12, "text-anchor": "end", class: "tick" }, number(most)));
    days.forEach((d, i) => {
      const h = (d[key] / most) * plot;
      const bar = node("rect", {
        x: left + i * step + step * 0.1, y: top + plot - h, width: Math.max(1, step * 0.8), height: h,
        style: `fill: ${colour}`, "data-date": d.date, "data-value": d[key],
      });
      bar.append(node("title", {}, `${d.date}: ${number(d[key])}`));
      svg.append(bar);
    });
    const first = days[0].date, last = days[days.length - 1].date;
    svg.append(node("text", { x: left, y: height - 4, class: "tick" }, first));
    svg.append(node("text", { x: width, y: height - 4, "text-anchor": "end", class: "tick" }, last));
    holder.replaceChildren(svg);
  };

  const fillResources = (totals) => {
    const select = byId("resource");
    const ids = Object.keys(totals).filter((id) => id !== "*");
    ids.sort((a, b) => totals[b].requests - totals[a].requests || (a < b ? -1 : 1));
    for (const id of ids.slice(0, 500)) {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = `${id} (${counted(totals[id].requests, "request", "requests")})`;
      select.append(option);
    }
  };

  const show = async () => {
    const problem = byId("problem");
    const secret = byId("secret").value;
    const resource = byId("resource").value;
    try {
      // Before the first answer the list holds only "All resources": all the totals fill it.
      const fields = resource ? { secret, resource_id: resource } : { secret };
      const totals = (await post("../statistics", fields)).totals;
      if (!resourcesLoaded) {
        fillResources(totals);
        resourcesLoaded = true;
      }
      const daily = await post("daily", { secret, resource_id: resource, days: byId("days").value });
      const days = daily.days;
      const all = totals[resource || "*"] || { requests: 0, errors: 0, emails: 0 };
      byId("summary").textContent =
        `${resource ? "Resource " + resource : "All resources"}, since ever: ` +
        `${counted(all.requests, "request", "requests")}, ${counted(all.errors, "failure", "failures")}, ` +
        `${counted(all.emails, "unique requester", "unique requesters")}.`;
      chart(byId("chart-requests"), days, "requests", "Requests per day", "var(--accent)");
      chart(byId("chart-errors"), days, "errors", "Failures per day", "#a4161a");
      chart(byId("chart-requesters"), days, "requesters", "Unique requesters per day", "#1b5e20", false);
      byId("numbers").replaceChildren(...days.slice().reverse().map((d) => {
        const row = document.createElement("tr");
        for (const value of [d.date, number(d.requests), number(d.errors), number(d.requesters)]) {
          const cell = document.createElement("td");
          cell.textContent = value;
          row.append(cell);
        }
        return row;
      }));
      problem.hidden = true;
      byId("charts").hidden = false;
    } catch (error) {
      problem.textContent = error.message;
      problem.hidden = false;
      byId("charts").hidden = true;
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  for (const id of ["resource", "days"]) {
    byId(id).addEventListener("change", () => { if (form.checkValidity()) show(); });
  }
})();
