// The portal's dashboard chart: tokens by day, from the canvas's data-chart (dashboard.html).
(function () {
  const canvas = document.getElementById("chart-days");
  if (!canvas || typeof Chart === "undefined") return;
  const data = JSON.parse(canvas.dataset.chart);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.days,
      datasets: [
        { label: "prompt tokens", data: data.prompt, stack: "tokens" },
        { label: "completion tokens", data: data.completion, stack: "tokens" },
      ],
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "tokens" } } },
    },
  });
})();
