/* compare.html: the task table (sort, filter) and a task's attempts in every run, drawn when opened. */
(function () {
  var A = ARC, el = A.el;
  var data = A.json("run-data");
  var rows = data.rows;
  rows.forEach(function (r) { r.seconds.forEach(function (s, k) { r["s" + k] = s; }); });
  A.taskTable(rows, "differs", function (r, filter) { return filter === "all" || r.differs; },
              function (cell, i) { draw(cell, A.json("task-" + i)); });

  function draw(host, t) {
    host.appendChild(el("h3", null, "Task ", el("code", { text: t.id })));
    t.tests.forEach(function (test, k) {
      var box = el("div", { class: "test" });
      box.appendChild(el("h3", { text: "Test input " + (k + 1) + " of " + t.tests.length }));
      var line = el("div");
      if (test.input) line.appendChild(A.grid(test.input, { label: "input", px: 140 }));
      if (test.output) line.appendChild(A.grid(test.output, { label: "right output", px: 140 }));
      box.appendChild(line);
      var side = el("div", { class: "side" });
      test.runs.forEach(function (run, j) {
        var col = el("div", { class: "run" }, el("h3", null, data.labels[j] + " ", el("span", { class: "status " + run.status, text: run.status })));
        if (!run.attempts.length) col.appendChild(el("p", { class: "muted", text: "no attempt" }));
        run.attempts.forEach(function (a, n) {
          var mark = a.right === true ? "right" : a.right === false ? "wrong" : null;
          col.appendChild(A.grid(a.grid, { label: "attempt " + (n + 1) + (a.right === true ? " ✓ right" : a.right === false ? " ✗" : ""),
                                           px: 140, mark: mark, against: a.right === false ? test.output : null }));
        });
        side.appendChild(col);
      });
      box.appendChild(side);
      host.appendChild(box);
    });
  }

  /* Time per task: every other run against the first. */
  var plots = document.getElementById("time-plots");
  for (var k = 1; k < data.labels.length; k++) {
    var pts = rows.filter(function (r) { return r.seconds[0] !== null && r.seconds[k] !== null; })
                  .map(function (r) { return [r.seconds[0], r.seconds[k], r.id, r.differs]; });
    plots.appendChild(el("figure", { class: "g" }, A.scatter(pts, data.labels[0], data.labels[k]),
      el("figcaption", { text: "seconds per task: " + data.labels[k] + " against " + data.labels[0] +
                               " (red: solved by one run, not the other)" })));
  }

  document.body.dataset.ready = "1";
})();
