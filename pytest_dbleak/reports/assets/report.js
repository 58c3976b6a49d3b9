// Opens the <details> a marker (or a #leak-N link) points to: fragment navigation alone
// scrolls to a closed <details> without opening it. data-js shows the buttons, which need
// the script, and tells a browser test the script ran.
(function () {
  document.documentElement.setAttribute("data-js", "ready");
  function reveal(hash) {
    var el = hash && document.getElementById(decodeURIComponent(hash.slice(1)));
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView({block: "start"}); }
  }
  document.querySelectorAll("a.leak-marker").forEach(function (a) {
    a.addEventListener("click", function () { reveal(a.getAttribute("href")); });
  });
  window.addEventListener("hashchange", function () { reveal(location.hash); });
  reveal(location.hash);
  function all(state) {
    document.querySelectorAll("details.leak").forEach(function (d) { d.open = state; });
  }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) { expand.addEventListener("click", function () { all(true); }); }
  if (collapse) { collapse.addEventListener("click", function () { all(false); }); }
  // Hover: the test under the pointer, by name, from one JSON text (no node per test).
  var svg = document.getElementById("timeline");
  var tip = document.getElementById("hover");
  var line = document.getElementById("hover-line");
  var raw = document.getElementById("tests-data");
  if (svg && tip && line && raw) {
    var data = JSON.parse(raw.textContent);
    var n = data.names.length;
    var left = +svg.getAttribute("data-left");
    var plot = +svg.getAttribute("data-plot-width");
    var width = svg.viewBox.baseVal.width;
    svg.addEventListener("mousemove", function (event) {
      var box = svg.getBoundingClientRect();
      var x = (event.clientX - box.left) * width / box.width;
      var i = Math.floor((x - left) / plot * n);
      if (!n || i < 0 || i >= n) { hide(); return; }
      var centre = left + (i + 0.5) * plot / n;
      line.setAttribute("x1", centre); line.setAttribute("x2", centre);
      line.setAttribute("visibility", "visible");
      var module = data.modules[data.module[i]];
      var name = module ? module + "::" + data.names[i] : data.names[i];
      tip.textContent = "#" + (i + 1) + " " + name + " \u2014 " + data.server[i] +
        " server, " + data.checked[i] + " checked out";
      tip.hidden = false;
      var over = event.clientX - box.left > box.width * 0.6;
      tip.style.left = over ? "" : (event.clientX - box.left + 12) + "px";
      tip.style.right = over ? (box.right - event.clientX + 12) + "px" : "";
      tip.style.top = (event.clientY - box.top + 12) + "px";
    });
    svg.addEventListener("mouseleave", hide);
  }
  function hide() {
    if (tip) { tip.hidden = true; }
    if (line) { line.setAttribute("visibility", "hidden"); }
  }
})();
