from parley.service import main
from services.tools.service import ToolsStage

main(ToolsStage, placed=False)
