/* report.html: the time line, the task table (sort, filter) and each task drawn when it is opened. */
(function () {
  var A = ARC, el = A.el;
  var run = A.json("run-data");
  var rows = run.rows;

  A.timeline(document.getElementById("timeline-plot"), run.timeline);
  var table = A.taskTable(rows, "all", function (r, filter) { return filter === "all" || r.status === filter; },
                          function (cell, i) { drawTask(cell, A.json("task-" + i)); });

  /* -- one task --------------------------------------------------------------------------------- */
  function drawTask(host, t) {
    host.appendChild(el("h3", null, "Task ", el("code", { text: t.id }), " ",
                        el("span", { class: "status " + t.status, text: t.status })));
    if (t.error) host.appendChild(el("div", { class: "error-box", text: t.error }));
    var top = el("div", { class: "side" });
    if (t.metrics) {
      var m = el("table", { class: "meta" });
      Object.keys(t.metrics).forEach(function (k) {
        m.appendChild(el("tr", null, el("th", { text: k }), el("td", { class: "num", text: A.pct(t.metrics[k]) })));
      });
      top.appendChild(m);
    }
    if (t.loss && t.loss.length) {
      top.appendChild(A.lossCurve(t.loss, t.loss_kind === "group" ? "loss (the group's mean: an older log)"
                                                                   : "training loss of this task"));
    }
    if (t.objective_losses) {
      var o = el("table", { class: "meta" });
      Object.keys(t.objective_losses).forEach(function (k) {
        o.appendChild(el("tr", null, el("th", { text: "final loss, " + k }), el("td", { class: "num", text: A.num(t.objective_losses[k], 4) })));
      });
      top.appendChild(o);
    }
    host.appendChild(top);
    if (!t.grids_known) {
      host.appendChild(el("p", { class: "muted", text: "The task's grids could not be loaded (see the notes at the top): only its answers are drawn." }));
    }
    if (t.train.length) {
      host.appendChild(el("h3", { text: "Train pairs" }));
      var pairs = el("div");
      t.train.forEach(function (p, k) {
        pairs.appendChild(el("div", { class: "pair" }, A.grid(p[0], { label: "in " + (k + 1), px: 120 }),
                             el("span", { class: "arrow", text: "→" }), A.grid(p[1], { label: "out " + (k + 1), px: 120 })));
      });
      host.appendChild(pairs);
    }
    t.tests.forEach(function (test, k) { drawTest(host, test, k, t.tests.length); });
  }

  function drawTest(host, test, k, n) {
    var box = el("div", { class: "test" });
    box.appendChild(el("h3", { text: "Test input " + (k + 1) + " of " + n + " · " + test.predictions + " predictions" }));
    var line = el("div");
    if (test.input) line.appendChild(A.grid(test.input, { label: "input", px: 160 }));
    if (test.output) line.appendChild(A.grid(test.output, { label: "right output", px: 160 }));
    test.attempts.forEach(function (a, j) {
      var mark = a.right === true ? "right" : a.right === false ? "wrong" : null;
      line.appendChild(A.grid(a.grid, { label: "attempt " + (j + 1) + (a.right === true ? " ✓ right" : a.right === false ? " ✗" : ""),
                                       px: 160, mark: mark }));
    });
    if (!test.attempts.length) line.appendChild(el("p", { class: "muted", text: "No attempt: no prediction parsed (the submission holds the fallback)." }));
    box.appendChild(line);
    var wrong = test.output ? test.attempts.filter(function (a) { return a.right === false; }) : [];
    if (wrong.length) {
      var diff = el("div");
      diff.appendChild(el("p", { class: "muted", text: "Each wrong attempt against the right output (cells that differ are outlined):" }));
      wrong.forEach(function (a) {
        diff.appendChild(A.grid(a.grid, { label: "attempt " + (test.attempts.indexOf(a) + 1) + " vs right", px: 160, against: test.output }));
      });
      box.appendChild(diff);
    }
    if (test.candidates.length) {
      var selectors = [];
      test.candidates.forEach(function (c) { Object.keys(c.rank).forEach(function (s) { if (selectors.indexOf(s) < 0) selectors.push(s); }); });
      var head = el("tr", null, el("th", { text: "candidate" }), el("th", { class: "num", text: "votes" }),
                    el("th", { class: "num", text: "mean log-prob" }), el("th", { text: "log-prob per augmentation" }),
                    el("th", { class: "num", text: "P(right)" }), el("th", { text: "found by" }));
      selectors.forEach(function (s) { head.appendChild(el("th", { class: "num", text: "rank: " + s })); });
      head.appendChild(el("th", { text: "" }));
      var table = el("table", { class: "cands" }, head);
      test.candidates.forEach(function (c) {
        var mark = c.right === true ? "right" : null;
        var tr = el("tr", { class: c.submitted ? "submitted" : null },
          el("td", null, A.grid(c.grid, { px: 90, mark: mark })),
          el("td", { class: "num", text: c.count + " / " + test.predictions }),
          el("td", { class: "num", text: A.num(c.mean_logprob, 3) }),
          el("td", { class: "mono", text: c.logprobs ? c.logprobs.map(function (x) { return A.num(x, 2); }).join(" ") : "–" }),
          el("td", { class: "num", title: c.verdicts ? c.verdicts.map(function (x) { return A.num(x, 2); }).join(" ") : null,
                     text: c.p_right === null ? "–" : A.num(c.p_right, 2) }),
          el("td", { text: Object.keys(c.found_by).map(function (s) { return s + " " + c.found_by[s]; }).join(", ") || "–" }));
        selectors.forEach(function (s) {
          tr.appendChild(el("td", { class: "num", text: c.rank[s] === undefined ? "–" : String(c.rank[s] + 1) }));
        });
        tr.appendChild(el("td", { text: (c.submitted ? "attempt " + c.submitted : "") + (c.right ? " ✓ right" : "") }));
        table.appendChild(tr);
      });
      box.appendChild(el("h3", { text: "Candidates" }));
      box.appendChild(table);
      if (test.more_grids) {
        box.appendChild(el("p", { class: "muted more", text: "+ " + test.more_grids + " more grids (" + test.more_votes +
                                                        " votes), not drawn" }));
      }
    }
    host.appendChild(box);
  }

  var hash = /^#task=(\d+)$/.exec(location.hash);
  if (hash) { var tr = table.rows[+hash[1]]; if (tr) { table.toggle(tr); tr.scrollIntoView(); } }
  document.body.dataset.ready = "1";
})();
