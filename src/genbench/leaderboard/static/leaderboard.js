// genbench leaderboard: inlined into leaderboard.html by genbench.leaderboard.render, so the page is one file.
// Click a header to sort by it (again to reverse); blanks always sort last. The page honours a URL hash
// "#sort=<column key>" (or "#sort=-<key>" for descending) on load, so a sorted view can be linked.
// Click a sample grid to see it larger (its own size, at least twice the gallery's), again to shrink it.
(function () {
  "use strict";
  function value(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null) { return v === "" ? null : Number(v); }
    var t = cell.textContent.trim();
    return t === "" ? null : t.toLowerCase();
  }
  function sortTable(table, key, descending) {
    var heads = table.tHead.rows[0].cells, index = -1;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute("data-key") === key) { index = i; }
      heads[i].removeAttribute("aria-sort");
    }
    if (index < 0) { return; }
    heads[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[index]), y = value(b.cells[index]);
      if (x === null || y === null) { return x === null ? (y === null ? 0 : 1) : -1; }
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return descending ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  function fromHash() {
    var hash;
    try { hash = decodeURIComponent(window.location.hash.slice(1)); } catch (err) { return; }
    var match = /(?:^|&)sort=(-?)([^&]+)/.exec(hash);
    if (!match) { return; }
    document.querySelectorAll("table.sortable").forEach(function (table) {
      sortTable(table, match[2], match[1] === "-");
    });
  }
  function toggleSize(img) {
    var figure = img.closest("figure");
    var enlarged = figure.classList.toggle("enlarged");
    var shown = Number(img.getAttribute("width"));
    var wide = Math.max(img.naturalWidth, 2 * shown);
    img.style.width = enlarged ? Math.min(wide, document.documentElement.clientWidth - 60) + "px" : "";
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending" ||
          (th.getAttribute("aria-sort") === null && th.getAttribute("data-first") === "descending");
        sortTable(table, th.getAttribute("data-key"), descending);
      });
    });
  });
  document.querySelectorAll("figure.samples img").forEach(function (img) {
    img.addEventListener("click", function () { toggleSize(img); });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
