/* compare.html: the task table (sort, filter) and a task's attempts in every run, drawn when opened. */
(function () {
  var A = ARC, el = A.el;
  var data = A.json("run-data");
  var rows = data.rows;
  rows.forEach(function (r) { r.seconds.forEach(function (s, k) { r["s" + k] = s; }); });
  var tbody = document.querySelector("#task-table tbody");
  var trs = Array.prototype.slice.call(tbody.querySelectorAll("tr.task"));
  var filter = "differs", needle = "";

  function apply() {
    var shown = 0;
    trs.forEach(function (tr) {
      var r = rows[+tr.dataset.i];
      var ok = (filter === "all" || r.differs) && (!needle || r.id.toLowerCase().indexOf(needle) >= 0);
      tr.hidden = !ok;
      var next = tr.nextElementSibling;
      if (next && next.classList.contains("detail-row")) next.hidden = !ok;
      if (ok) shown++;
    });
    document.getElementById("shown").textContent = shown + " of " + rows.length + " tasks shown";
  }
  document.querySelectorAll("#filters button").forEach(function (b) {
    b.addEventListener("click", function () {
      document.querySelectorAll("#filters button").forEach(function (o) { o.classList.remove("on"); });
      b.classList.add("on");
      filter = b.dataset.filter;
      apply();
    });
  });
  document.getElementById("find").addEventListener("input", function (e) { needle = e.target.value.toLowerCase(); apply(); });
  document.querySelectorAll("#task-table th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var desc = th.classList.contains("asc");
      document.querySelectorAll("#task-table th").forEach(function (o) { o.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      tbody.querySelectorAll("tr.detail-row").forEach(function (r) { r.remove(); });
      trs.forEach(function (tr) { tr.classList.remove("open"); });
      A.sortRows(tbody, trs, rows, th.dataset.key, desc);
    });
  });
  trs.forEach(function (tr) {
    tr.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); tr.click(); }
    });
    tr.addEventListener("click", function () {
      var next = tr.nextElementSibling;
      if (next && next.classList.contains("detail-row")) { next.remove(); tr.classList.remove("open"); return; }
      var cell = el("td", { class: "detail-cell", colspan: tr.children.length });
      tr.after(el("tr", { class: "detail-row" }, cell));
      tr.classList.add("open");
      draw(cell, A.json("task-" + tr.dataset.i));
    });
  });

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

  apply();
  document.body.dataset.ready = "1";
})();
