// Small SVG charts drawn here (no chart library): horizontal bars with labels. Every
// label goes in as text (textContent), never as markup.
const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

/** Horizontal bars: items [{label, value}]; title names the chart for screen readers. */
export function barChart(items, { title, width = 320, unit = '' } = {}) {
  const row = 20;
  const labelW = Math.min(130, Math.round(width * 0.4));
  const height = Math.max(row, items.length * row) + 4;
  const svg = el('svg', {
    class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
  });
  svg.appendChild(el('title', {}, title || 'chart'));
  const max = Math.max(1, ...items.map((i) => Number(i.value) || 0));
  const barMax = width - labelW - 60;
  items.forEach((item, i) => {
    const y = i * row + 2;
    const label = String(item.label);
    svg.appendChild(el('text', { x: 0, y: y + 13 }, label.length > 20 ? label.slice(0, 19) + '…' : label));
    const w = Math.max(1, Math.round(((Number(item.value) || 0) / max) * barMax));
    const bar = el('rect', { class: 'bar', x: labelW, y: y + 2, width: w, height: row - 6, rx: 2 });
    bar.appendChild(el('title', {}, `${label}: ${item.value}${unit}`));
    svg.appendChild(bar);
    svg.appendChild(el('text', { x: labelW + w + 4, y: y + 13 }, `${item.value}${unit}`));
  });
  if (!items.length) svg.appendChild(el('text', { x: 0, y: 14 }, 'nothing yet'));
  return svg;
}
