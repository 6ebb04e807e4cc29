// The page of a job not known (yet): a request just accepted reaches the views within a second or so, so
// the page asks again a few times and shows the job's page as soon as it exists; then it stops asking.
"use strict";
(() => {
  const jobId = document.getElementById("unknown").dataset.jobId;
  let tries = 0;
  const look = async () => {
    tries += 1;
    try {
      const answer = await fetch("./" + encodeURIComponent(jobId), {headers: {Accept: "application/json"}});
      if (answer.ok) { window.location.reload(); return; }
    } catch (error) { /* the service is not answering: ask again */ }
    if (tries < 15) { setTimeout(look, 1000); }
  };
  setTimeout(look, 1000);
})();
