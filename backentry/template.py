"""The back-entry template: XLSX with instructions, or CSV."""


from __future__ import annotations

import csv
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation

from vaxline import csvsafe

from .rows import (
    COLUMNS,
    ERRORS_COLUMN,
    ROW_COLUMN,
    VACCINE_TABLE,
)

# -- the template ----------------------------------------------------------------------------------------

def write_template(path: Path) -> None:
    """The back-entry template: `.xlsx` (a sheet to fill in: the Vietnamese headers, the English field
    names under them, text columns kept as text so IDs keep their leading zeros; and a sheet of
    instructions with an example), or `.csv` (the two header rows)."""
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8-sig") as out:
            writer = csv.writer(out)
            writer.writerow(csvsafe.row(c.header for c in COLUMNS))
            writer.writerow(csvsafe.row(c.field for c in COLUMNS))
        return
    book = Workbook()
    sheet = book.active
    sheet.title = "Mũi tiêm"
    sheet.append([c.header for c in COLUMNS])
    sheet.append([c.field for c in COLUMNS])
    formats = {"birth_date": "DD/MM/YYYY", "administered_at": "DD/MM/YYYY", "administered_time": "HH:MM",
               "dose_number": "0"}
    for index, column in enumerate(COLUMNS, start=1):
        letter = get_column_letter(index)
        header, names = sheet.cell(1, index), sheet.cell(2, index)
        header.font = Font(bold=True)
        header.fill = PatternFill("solid", fgColor="DDEBF7" if column.required else "F2F2F2")
        names.font = Font(italic=True, color="808080")
        sheet.column_dimensions[letter].width = max(14, len(column.header) + 4)
        sheet.column_dimensions[letter].number_format = formats.get(column.field, "@")  # "@": text
    sheet.freeze_panes = "A3"
    sexes = DataValidation(type="list", formula1='"Nam,Nữ,M,F"', allow_blank=True)
    sexes.add(f"{get_column_letter([c.field for c in COLUMNS].index('sex') + 1)}3:"
              f"{get_column_letter([c.field for c in COLUMNS].index('sex') + 1)}1048576")
    sheet.add_data_validation(sexes)

    notes = book.create_sheet("Hướng dẫn")
    notes.append(["Cột / Column", "Tên trường / Field", "Bắt buộc / Required", "Cách ghi / How to fill in",
                  "Ví dụ / Example"])
    for column in COLUMNS:
        notes.append([column.header, column.field, "có / yes" if column.required else "không / no", column.rule,
                      column.example])
    notes.append([])
    notes.append(["Vắc xin / Vaccine", "Mã / Code"])
    for name, code in VACCINE_TABLE:
        notes.append([name, code])
    notes.append([])
    for line in (
        "Điền từ dòng 3 của trang 'Mũi tiêm'; dòng 2 (tên trường tiếng Anh) có thể giữ hoặc xoá."
        " / Fill in from row 3 of the 'Mũi tiêm' sheet; row 2 (the English field names) may stay or go.",
        "Ngày: DD/MM/YYYY, YYYY-MM-DD hoặc ô ngày của Excel; giờ là giờ Việt Nam (UTC+7); không có giờ tiêm: 12:00."
        " / Dates: DD/MM/YYYY, YYYY-MM-DD or Excel date cells; times are Vietnam time; no time: 12:00.",
        "Nhập lại cùng tệp không tạo bản ghi trùng (theo Mã bản ghi)."
        " / Importing the same file again adds nothing (records are keyed by their record id).",
        "Dòng bị từ chối được ghi vào tệp <tên tệp>.errors.xlsx kèm lý do; sửa ở đó rồi nhập lại tệp đó."
        f" / Rejected rows go to <file>.errors.xlsx with the reasons (columns {ROW_COLUMN}, {ERRORS_COLUMN});"
        " fix them there and import that file.",
    ):
        notes.append([line])
    for letter, width in zip("ABCDE", (22, 20, 18, 70, 20)):
        notes.column_dimensions[letter].width = width
    for cell in notes[1]:
        cell.font = Font(bold=True)
    for row in notes.iter_rows(min_row=2, max_col=4):
        row[-1].alignment = Alignment(wrap_text=True, vertical="top")
    book.save(path)
